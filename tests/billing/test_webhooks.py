"""The Stripe webhook: signed deliveries credit a top-up once, whatever is replayed, doubled,
forged or interrupted. Deliveries are signed here as Stripe signs them (HMAC-SHA256 over
"<timestamp>.<raw body>"); the fake Stripe server's own deliveries are in test_topups.py."""

import hashlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings

from billing.models import LedgerEntry, StripeEvent, TopUp, TopUpRefund, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import ledger_post
from tests.factories import HoldFactory, TopUpFactory, WalletFactory

WEBHOOK = "/billing/stripe/webhook/"
TWENTY = 20_000_000


def sign(body: bytes, *, secret: str | None = None, at: float | None = None) -> str:
    stamp = int(at if at is not None else time.time())
    key = (secret or settings.STRIPE_WEBHOOK_SECRET).encode()
    digest = hmac.new(key, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def event(kind: str, obj: dict, *, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "type": kind,
            "data": {"object": obj},
        }
    ).encode()


def session(topup: TopUp, *, payment_status: str = "paid", amount_cents: int | None = None):
    return {
        "id": topup.stripe_checkout_session_id,
        "object": "checkout.session",
        "status": "complete",
        "payment_status": payment_status,
        "amount_total": amount_cents if amount_cents is not None else topup.amount_micros // 10_000,
        "currency": "usd",
        "client_reference_id": str(topup.pk),
        "metadata": {"topup_id": str(topup.pk)},
        "payment_intent": f"pi_{topup.pk}",
    }


def charge(topup: TopUp, refunds: list[tuple[str, int]]) -> dict:
    return {
        "id": f"ch_{topup.pk}",
        "object": "charge",
        "payment_intent": topup.stripe_payment_intent_id,
        "amount": topup.amount_micros // 10_000,
        "amount_refunded": sum(cents for _, cents in refunds),
        "currency": "usd",
        "metadata": {"topup_id": str(topup.pk)},
        "refunds": {
            "object": "list",
            "data": [
                {"id": rid, "object": "refund", "amount": cents, "status": "succeeded"}
                for rid, cents in refunds
            ],
        },
    }


def deliver(client, body: bytes, signature: str | None = None):
    return client.post(
        WEBHOOK,
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(body) if signature is None else signature,
    )


@pytest.fixture
def topup(db):
    wallet = WalletFactory()
    return TopUpFactory(
        wallet=wallet,
        amount_micros=TWENTY,
        stripe_checkout_session_id=f"cs_test_{uuid.uuid4().hex}",
    )


def topup_entries(wallet: Wallet):
    return LedgerEntry.objects.filter(wallet=wallet, kind=LedgerEntry.Kind.TOPUP)


def assert_books(wallet: Wallet) -> None:
    wallet.refresh_from_db()
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)


def test_a_paid_checkout_credits_the_amount_the_top_up_recorded(client, topup):
    response = deliver(client, event("checkout.session.completed", session(topup)))

    assert response.status_code == 200
    assert response.json()["outcome"] == "credited $20.00"
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
    assert topup.paid_at is not None
    assert topup.receipt_number == f"TB-{topup.paid_at:%Y%m}-{topup.pk:06d}"
    assert topup.stripe_payment_intent_id == f"pi_{topup.pk}"
    entry = topup_entries(topup.wallet).get()
    assert (entry.amount_micros, entry.idempotency_key) == (
        TWENTY,
        f"stripe:checkout:{topup.stripe_checkout_session_id}",
    )
    assert topup.ledger_entry == entry
    assert StripeEvent.objects.get().outcome == "credited $20.00"
    topup.wallet.refresh_from_db()
    assert topup.wallet.balance_micros == TWENTY


def test_a_replayed_event_answers_200_and_credits_nothing_more(client, topup):
    body = event("checkout.session.completed", session(topup))
    assert deliver(client, body).status_code == 200
    again = deliver(client, body)

    assert again.status_code == 200
    assert again.json()["outcome"] == "credited $20.00"  # the stored outcome of the first
    assert topup_entries(topup.wallet).count() == 1
    assert StripeEvent.objects.count() == 1
    topup.wallet.refresh_from_db()
    assert topup.wallet.balance_micros == TWENTY


def test_a_second_event_for_the_same_session_credits_nothing_more(client, topup):
    deliver(client, event("checkout.session.completed", session(topup)))
    second = deliver(client, event("checkout.session.async_payment_succeeded", session(topup)))

    assert second.json()["outcome"] == "already credited"
    assert topup_entries(topup.wallet).count() == 1
    assert StripeEvent.objects.count() == 2


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda body: sign(body, secret="whsec_forged"), id="wrong-secret"),
        pytest.param(lambda body: sign(body, at=time.time() - 600), id="stale"),
        pytest.param(lambda body: sign(body + b" "), id="other-body"),
        pytest.param(lambda body: "t=1,v1=00", id="garbage"),
        pytest.param(lambda body: "", id="missing"),
    ],
)
def test_a_forged_or_stale_delivery_is_refused_and_credits_nothing(client, topup, signature):
    body = event("checkout.session.completed", session(topup))
    response = deliver(client, body, signature(body))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()
    assert not LedgerEntry.objects.exists()
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING


def test_an_async_payment_waits_then_credits_when_it_succeeds(client, topup):
    pending = deliver(
        client, event("checkout.session.completed", session(topup, payment_status="unpaid"))
    )
    assert pending.json()["outcome"] == "pending: async payment processing"
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING
    assert "processing" in topup.status_detail
    assert not LedgerEntry.objects.exists()

    deliver(client, event("checkout.session.async_payment_succeeded", session(topup)))

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
    assert topup.status_detail == ""
    assert topup_entries(topup.wallet).get().amount_micros == TWENTY


def test_a_failed_async_payment_closes_the_top_up_without_credit(client, topup):
    deliver(client, event("checkout.session.completed", session(topup, payment_status="unpaid")))
    failed = deliver(
        client,
        event("checkout.session.async_payment_failed", session(topup, payment_status="unpaid")),
    )

    assert failed.json()["outcome"] == "closed: failed"
    topup.refresh_from_db()
    assert (topup.status, topup.status_detail) == (
        TopUp.Status.FAILED,
        "The bank payment failed; nothing was charged.",
    )
    assert not LedgerEntry.objects.exists()


def test_an_expired_session_closes_a_pending_top_up_but_never_a_paid_one(client, topup):
    other = TopUpFactory(wallet=topup.wallet, stripe_checkout_session_id="cs_test_other")
    deliver(client, event("checkout.session.completed", session(topup)))

    deliver(client, event("checkout.session.expired", session(other, payment_status="unpaid")))
    late = deliver(
        client, event("checkout.session.expired", session(topup, payment_status="unpaid"))
    )

    other.refresh_from_db()
    topup.refresh_from_db()
    assert other.status == TopUp.Status.EXPIRED
    assert late.json()["outcome"] == "ignored: top-up already paid"
    assert topup.status == TopUp.Status.PAID


def test_a_payment_that_does_not_match_the_top_up_is_not_credited(client, topup):
    response = deliver(client, event("checkout.session.completed", session(topup, amount_cents=1)))

    assert response.status_code == 200  # applied: a retry would not change the answer
    assert response.json()["outcome"] == "rejected: amount or currency does not match the top-up"
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.FAILED
    assert not LedgerEntry.objects.exists()


def test_events_for_unknown_sessions_and_other_types_are_stored_and_ignored(client, db):
    unknown = {"id": "cs_test_elsewhere", "payment_status": "paid", "amount_total": 100}
    first = deliver(client, event("checkout.session.completed", unknown))
    second = deliver(client, event("customer.created", {"id": "cus_1"}))

    assert first.json()["outcome"] == "ignored: no top-up for this session"
    assert second.json()["outcome"] == "ignored: not an event this platform uses"
    assert StripeEvent.objects.count() == 2
    assert not LedgerEntry.objects.exists()


def test_a_failure_mid_way_answers_5xx_keeps_nothing_and_the_retry_credits_once(
    client, ledger_fails_once
):
    wallet = WalletFactory()
    topup = TopUpFactory(
        wallet=wallet, amount_micros=TWENTY, stripe_checkout_session_id="cs_test_f"
    )
    body = event("checkout.session.completed", session(topup))

    failed = deliver(client, body)

    assert failed.status_code == 500
    assert not StripeEvent.objects.exists()  # not marked processed: the retry applies it
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING
    assert deliver(client, body).status_code == 200
    assert deliver(client, body).status_code == 200
    assert topup_entries(wallet).count() == 1
    assert_books(wallet)
    assert wallet.balance_micros == TWENTY


def test_simultaneous_deliveries_credit_once(live_server, transactional_db):
    wallet = WalletFactory()
    topup = TopUpFactory(
        wallet=wallet, amount_micros=TWENTY, stripe_checkout_session_id="cs_test_c"
    )
    paid = session(topup)
    # The same event delivered eight times at once, and four other events for the session.
    bodies = [event("checkout.session.completed", paid, event_id="evt_same")] * 8
    bodies += [event("checkout.session.async_payment_succeeded", paid) for _ in range(4)]
    start = threading.Barrier(len(bodies))

    def post(body: bytes) -> int:
        start.wait()
        headers = {"Stripe-Signature": sign(body), "Content-Type": "application/json"}
        return httpx.post(live_server.url + WEBHOOK, content=body, headers=headers).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(post, bodies))

    assert statuses == [200] * len(bodies)
    assert topup_entries(wallet).count() == 1
    assert StripeEvent.objects.count() == 5
    assert_books(wallet)
    assert wallet.balance_micros == TWENTY


def paid_topup(client, wallet: Wallet, amount: int = TWENTY) -> TopUp:
    topup = TopUpFactory(
        wallet=wallet,
        amount_micros=amount,
        stripe_checkout_session_id=f"cs_test_{uuid.uuid4().hex}",
    )
    deliver(client, event("checkout.session.completed", session(topup)))
    topup.refresh_from_db()
    return topup


def test_a_refund_from_stripe_takes_back_the_credit_once(client, db):
    wallet = WalletFactory()
    topup = paid_topup(client, wallet)
    body = event("charge.refunded", charge(topup, [("re_1", 500)]))

    assert deliver(client, body).json()["outcome"] == "refunds recorded: 1"
    deliver(client, body)
    full = deliver(client, event("charge.refunded", charge(topup, [("re_1", 500), ("re_2", 1500)])))

    assert full.json()["outcome"] == "refunds recorded: 1"
    refunds = LedgerEntry.objects.filter(wallet=wallet, kind=LedgerEntry.Kind.REFUND)
    assert sorted(refunds.values_list("amount_micros", flat=True)) == [-15_000_000, -5_000_000]
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_micros) == (TopUp.Status.REFUNDED, TWENTY)
    assert_books(wallet)
    assert (wallet.balance_micros, wallet.debt_micros) == (0, 0)


def test_a_refund_of_spent_credit_becomes_debt_that_the_next_top_up_pays(client, db):
    wallet = WalletFactory()
    topup = paid_topup(client, wallet)
    ledger_post(wallet=wallet, kind="usage", amount_micros=-12_000_000, idempotency_key="spent")
    HoldFactory(wallet=wallet, amount_micros=3_000_000)
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=3_000_000)

    deliver(client, event("charge.refunded", charge(topup, [("re_all", 2000)])))

    # $8 left, $3 of it held by a call in flight: $5 comes back now, $15 is debt.
    refund = TopUpRefund.objects.get()
    assert (refund.amount_micros, refund.debited_micros, refund.debt_micros) == (
        TWENTY,
        5_000_000,
        15_000_000,
    )
    assert refund.ledger_entry.amount_micros == -5_000_000
    assert_books(wallet)
    assert (wallet.balance_micros, wallet.debt_micros) == (3_000_000, 15_000_000)

    Wallet.objects.filter(pk=wallet.pk).update(held_micros=0)
    paid_topup(client, wallet, amount=10_000_000)

    assert_books(wallet)
    assert (wallet.balance_micros, wallet.debt_micros) == (3_000_000, 5_000_000)
    recovery = LedgerEntry.objects.get(wallet=wallet, kind=LedgerEntry.Kind.ADJUSTMENT)
    assert recovery.amount_micros == -10_000_000
    assert recovery.description.startswith("Refund debt paid from top-up TB-")


def test_a_refund_for_a_charge_of_no_top_up_is_ignored(client, db):
    stray = {
        "id": "ch_x",
        "payment_intent": "pi_elsewhere",
        "metadata": {},
        "refunds": {"data": []},
    }
    response = deliver(client, event("charge.refunded", stray))

    assert response.json()["outcome"] == "ignored: no top-up for this charge"
    assert not TopUpRefund.objects.exists()
