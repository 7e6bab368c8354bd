"""Receipts of card top-ups: what they say, the printable page, the PDF and the email; only the
payer's paid or refunded top-ups have one."""

import re
import smtplib
from datetime import UTC, datetime

import pytest
from django.core import mail
from django.test import override_settings

from billing.models import TopUp
from billing.receipts import Receipt, ReceiptRefund, receipt_pdf, topup_receipt
from billing.receipts import topup_receipt_email_send as send
from tasks.tasks import send_topup_receipt
from tests.factories import PaidTopUpFactory, TopUpFactory, TopUpRefundFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def payer():
    return UserFactory(email="payer@example.com", name="Ada Lovelace", time_zone="Europe/Berlin")


@pytest.fixture
def topup(payer):
    """$20 paid on 2026-12-01 at 23:30 UTC: 2026-12-02 00:30 in Berlin."""
    return PaidTopUpFactory(
        wallet__user=payer,
        amount_micros=20_000_000,
        receipt_number="TB-202612-000042",
        stripe_payment_intent_id="pi_3Receipt",
        paid_at=datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
    )


@pytest.fixture
def refunded(topup):
    """$5 of it refunded on 2026-12-03 at 09:00 UTC (10:00 in Berlin)."""
    TopUpRefundFactory(
        topup=topup, amount_micros=5_000_000, created_at=datetime(2026, 12, 3, 9, tzinfo=UTC)
    )
    TopUp.objects.filter(pk=topup.pk).update(refunded_micros=5_000_000)
    topup.refresh_from_db()
    return topup


def pdf_text(content: bytes) -> list[str]:
    """The strings the PDF draws (it is written uncompressed: `(text) Tj`)."""
    return [
        text.replace(rb"\(", b"(").replace(rb"\)", b")").decode("latin-1")
        for text in re.findall(rb"\(((?:[^()\\]|\\.)*)\) Tj", content)
    ]


# --- what a receipt says ------------------------------------------------------------------------


def test_a_receipt_says_who_paid_what_when_in_the_payers_zone(topup):
    assert topup_receipt(topup=topup) == Receipt(
        topup_id=topup.pk,
        site_name="TokenByte",
        number="TB-202612-000042",
        paid_at="2026-12-02 00:30:00",
        zone_name="Europe/Berlin",
        billed_to_email="payer@example.com",
        billed_to_name="Ada Lovelace",
        item="Account credit",
        amount_micros=20_000_000,
        payment_reference="pi_3Receipt",
        refunds=(),
        refunded_micros=0,
        status_label="Paid",
        balance_rule="Prepaid credit; does not expire.",
        url=f"http://127.0.0.1:8000/wallet/receipts/{topup.pk}/",
        pdf_url=f"http://127.0.0.1:8000/wallet/receipts/{topup.pk}.pdf",
    )


def test_a_receipt_lists_the_refunds_and_what_was_paid_net(refunded):
    receipt = topup_receipt(topup=refunded)

    assert receipt.refunds == (
        ReceiptRefund(refunded_at="2026-12-03 10:00:00", amount_micros=5_000_000),
    )
    assert receipt.refunded_micros == 5_000_000
    assert receipt.net_micros == 15_000_000
    assert receipt.status_label == "Paid, partly refunded"


@override_settings(SITE_NAME="Acme AI")
def test_the_receipt_is_issued_in_the_sites_name(topup):
    assert topup_receipt(topup=topup).site_name == "Acme AI"


def test_a_top_up_that_was_never_paid_has_no_receipt(payer):
    pending = TopUpFactory(wallet__user=payer)

    with pytest.raises(ValueError, match="has no receipt"):
        topup_receipt(topup=pending)


# --- the printable page -------------------------------------------------------------------------


def test_the_receipt_page_shows_the_whole_receipt_with_a_print_button(client, payer, refunded):
    client.force_login(payer)

    response = client.get(f"/wallet/receipts/{refunded.pk}/")

    assert response.status_code == 200
    content = response.content.decode()
    for text in [
        "<title>Receipt TB-202612-000042 · TokenByte</title>",
        '<p class="receipt-brand">TokenByte</p>',
        '<strong id="receipt-number">TB-202612-000042</strong>',
        '<dd id="receipt-paid-at">2026-12-02 00:30:00 (Europe/Berlin)</dd>',
        '<dd id="receipt-billed-to">Ada Lovelace<br>payer@example.com</dd>',
        "<code>pi_3Receipt</code>",
        '<td>Account credit</td><td class="num">$20.00</td>',
        '<th scope="row">Refunded 2026-12-03 10:00:00 (Europe/Berlin)</th>'
        '<td class="num">-$5.00</td>',
        '<th scope="row">Net paid</th><td class="num">$15.00</td>',
        "Prepaid credit; does not expire.",
        '<button type="button" class="btn" data-print hidden>Print</button>',
        f'href="/wallet/receipts/{refunded.pk}.pdf" download>Download PDF</a>',
    ]:
        assert text in content, text


def test_the_pdf_download_is_the_same_receipt(client, payer, refunded):
    client.force_login(payer)

    response = client.get(f"/wallet/receipts/{refunded.pk}.pdf")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == (
        'attachment; filename="receipt-TB-202612-000042.pdf"'
    )
    assert response.content.startswith(b"%PDF-")
    text = pdf_text(response.content)
    for expected in [
        "TokenByte",
        "TB-202612-000042",
        "2026-12-02 00:30:00 (Europe/Berlin)",
        "Ada Lovelace <payer@example.com>",
        "pi_3Receipt",
        "Account credit",
        "$20.00",
        "Refunded 2026-12-03 10:00:00 (Europe/Berlin)",
        "-$5.00",
        "$15.00",
        "Prepaid credit; does not expire.",
    ]:
        assert expected in text, expected


def test_the_same_receipt_makes_the_same_pdf(topup):
    assert receipt_pdf(topup=topup) == receipt_pdf(topup=topup)


@pytest.mark.parametrize("suffix", ["/", ".pdf"])
def test_another_users_receipt_is_a_404(client, outsider, topup, suffix):
    client.force_login(outsider)

    assert client.get(f"/wallet/receipts/{topup.pk}{suffix}").status_code == 404


@pytest.mark.parametrize("status", [TopUp.Status.PENDING, TopUp.Status.FAILED, "expired"])
@pytest.mark.parametrize("suffix", ["/", ".pdf"])
def test_a_top_up_that_was_not_paid_has_no_receipt_page(client, payer, status, suffix):
    unpaid = TopUpFactory(wallet__user=payer, status=status)
    client.force_login(payer)

    assert client.get(f"/wallet/receipts/{unpaid.pk}{suffix}").status_code == 404


def test_a_fully_refunded_top_up_keeps_its_receipt(client, payer, topup):
    TopUpRefundFactory(topup=topup, amount_micros=20_000_000)
    TopUp.objects.filter(pk=topup.pk).update(
        refunded_micros=20_000_000, status=TopUp.Status.REFUNDED
    )
    client.force_login(payer)

    content = client.get(f"/wallet/receipts/{topup.pk}/").content.decode()

    assert '<dd id="receipt-status">Refunded</dd>' in content
    assert '<th scope="row">Net paid</th><td class="num">$0.00</td>' in content


# --- the email ----------------------------------------------------------------------------------


def test_the_receipt_is_emailed_once_with_the_pdf_attached(topup):
    assert send(topup_id=topup.pk) is True
    assert send(topup_id=topup.pk) is False

    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["payer@example.com"]
    assert email.subject == "Your TokenByte receipt TB-202612-000042"
    assert email.body.splitlines()[:8] == [
        "Thank you for your payment. $20.00 was added to your TokenByte balance.",
        "",
        "Receipt TB-202612-000042",
        "Date paid: 2026-12-02 00:30:00 (Europe/Berlin)",
        "Billed to: Ada Lovelace <payer@example.com>",
        "Account credit: $20.00 (USD)",
        "Payment reference: pi_3Receipt",
        "Status: Paid",
    ]
    assert f"http://127.0.0.1:8000/wallet/receipts/{topup.pk}/" in email.body
    [(html, html_type)] = email.alternatives
    assert html_type == "text/html"
    assert '<strong id="receipt-number">TB-202612-000042</strong>' in html
    assert "<style>" in html
    [(filename, content, mimetype)] = email.attachments
    assert filename == "receipt-TB-202612-000042.pdf"
    assert mimetype == "application/pdf"
    assert content.startswith(b"%PDF-")
    assert "TB-202612-000042" in pdf_text(content)
    topup.refresh_from_db()
    assert topup.receipt_emailed_at is not None


def test_a_refund_before_the_email_is_on_the_emailed_receipt(refunded):
    send(topup_id=refunded.pk)

    assert "Refunded 2026-12-03 10:00:00: -$5.00" in mail.outbox[0].body
    assert "Net paid: $15.00" in mail.outbox[0].body


def test_a_top_up_without_a_receipt_sends_nothing(payer):
    pending = TopUpFactory(wallet__user=payer)

    assert send(topup_id=pending.pk) is False
    assert send(topup_id=987654) is False
    assert mail.outbox == []


def test_a_failed_send_leaves_the_receipt_unsent_for_the_retry(topup, monkeypatch):
    def refuse(*args, **kwargs):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr("django.core.mail.backends.locmem.EmailBackend.send_messages", refuse)

    with pytest.raises(OSError):
        send(topup_id=topup.pk)

    topup.refresh_from_db()
    assert topup.receipt_emailed_at is None


def test_the_task_sends_the_receipt(topup):
    assert send_topup_receipt(topup.pk) is True

    assert [email.subject for email in mail.outbox] == ["Your TokenByte receipt TB-202612-000042"]


def test_the_task_retries_on_smtp_trouble():
    assert send_topup_receipt.autoretry_for == (OSError,)
    assert send_topup_receipt.max_retries == 5
