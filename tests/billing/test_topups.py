"""Top-ups end to end against the bundled fake Stripe: the app creates Checkout Sessions through
the official SDK, the fake delivers signed webhooks (with its retries) to the app served on a
live server, and staff refund from the admin."""

import socket

import pytest
from django.test import override_settings
from django.urls import reverse

from billing.models import LedgerEntry, StripeEvent, TopUp, TopUpRefund
from billing.payments import (
    topup_checkout_cancel,
    topup_checkout_refresh,
    topup_checkout_start,
)
from billing.selectors import wallet_ledger_sum_micros
from fakestripe.server import FakeStripe
from tests.factories import UserFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk_test_topups"
SECRET = "whsec_topups"
WEBHOOK = "/billing/stripe/webhook/"
TWENTY = 20_000_000
SUCCESS = "http://testserver/wallet/topup/success/?session_id={CHECKOUT_SESSION_ID}"
CANCEL = "http://testserver/wallet/topup/cancel/"


@pytest.fixture(scope="module")
def fake_server():
    with FakeStripe(api_key=API_KEY, webhook_secret=SECRET, retry_delays=(0.2, 0.4)) as server:
        yield server


@pytest.fixture
def fake(fake_server, live_server):
    """The fake Stripe, fresh, delivering its webhooks to the app on the live server."""
    fake_server.reset()
    fake_server.webhook_url = live_server.url + WEBHOOK
    with override_settings(
        STRIPE_SECRET_KEY=API_KEY, STRIPE_API_BASE=fake_server.url, STRIPE_WEBHOOK_SECRET=SECRET
    ):
        yield fake_server


@pytest.fixture
def user(transactional_db):
    return UserFactory(email="payer@example.com")


def start(user, amount_micros: int = TWENTY) -> TopUp:
    return topup_checkout_start(
        user=user, amount_micros=amount_micros, success_url=SUCCESS, cancel_url=CANCEL
    )


def settled(fake: FakeStripe, event_type: str, count: int = 1) -> list[dict]:
    deliveries = fake.wait_for_deliveries(event_type, count=count, timeout=15)
    assert deliveries, f"no {event_type} delivered"
    return deliveries


def books_balance(topup: TopUp) -> int:
    wallet = topup.wallet
    wallet.refresh_from_db()
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    return wallet.balance_micros


def test_a_checkout_session_carries_the_top_up_and_its_exact_amount(fake, user):
    topup = start(user)

    session = fake.session(topup.stripe_checkout_session_id)
    assert topup.status == TopUp.Status.PENDING
    assert topup.checkout_url == f"{fake.url}/c/pay/{session['id']}"
    assert (session["mode"], session["amount_total"], session["currency"]) == (
        "payment",
        2000,
        "usd",
    )
    assert session["client_reference_id"] == str(topup.pk)
    assert session["metadata"] == {"topup_id": str(topup.pk), "user_id": str(user.pk)}
    assert session["customer_email"] == "payer@example.com"
    assert session["success_url"] == SUCCESS
    assert session["cancel_url"] == f"{CANCEL}?topup={topup.pk}"


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (4_990_000, "Top up between $5.00 and $10000.00."),
        (10_000_010_000, "Top up between $5.00 and $10000.00."),
        (20_000_001, "Enter an amount in whole cents."),
    ],
)
def test_amounts_outside_the_limits_start_nothing(fake, user, amount, message):
    with pytest.raises(ApplicationError) as error:
        start(user, amount)

    assert (error.value.code, error.value.message) == ("invalid_amount", message)
    assert not TopUp.objects.exists()
    assert fake.events() == []


def test_stripe_out_of_reach_fails_the_top_up_and_says_so(user):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with (
        override_settings(STRIPE_API_BASE=f"http://127.0.0.1:{port}"),
        pytest.raises(ApplicationError) as error,
    ):
        start(user)

    assert error.value.code == "payments_unavailable"
    topup = TopUp.objects.get()
    assert topup.status == TopUp.Status.FAILED
    assert topup.status_detail == "The payment provider could not be reached; nothing was charged."


def test_paying_on_the_hosted_page_credits_the_wallet_once(fake, user):
    topup = start(user)
    assert topup_checkout_refresh(topup=topup) == "open"

    fake.pay(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.completed")

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
    assert topup.checkout_url == ""
    assert books_balance(topup) == TWENTY
    entry = LedgerEntry.objects.get(wallet=topup.wallet)
    assert (entry.kind, entry.amount_micros) == (LedgerEntry.Kind.TOPUP, TWENTY)
    [event] = fake.events("checkout.session.completed")
    assert StripeEvent.objects.get().event_id == event["event"]["id"]

    fake.resend(event["event"]["id"])
    settled(fake, "checkout.session.completed", count=2)
    assert books_balance(topup) == TWENTY


def test_the_success_page_state_is_asked_of_stripe_until_the_webhook_lands(fake, user):
    fake.webhook_url = None  # the event is recorded but not delivered yet
    topup = start(user)
    fake.pay(topup.stripe_checkout_session_id)

    assert topup_checkout_refresh(topup=topup) == "paid"
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING  # only the webhook credits
    assert not LedgerEntry.objects.exists()


def test_an_async_payment_credits_when_it_clears(fake, user):
    topup = start(user)
    fake.pay_async(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.completed")
    assert topup_checkout_refresh(topup=topup) == "processing"
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING
    assert books_balance(topup) == 0

    fake.async_succeed(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.async_payment_succeeded")

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
    assert books_balance(topup) == TWENTY


def test_a_failed_async_payment_credits_nothing(fake, user):
    topup = start(user)
    fake.pay_async(topup.stripe_checkout_session_id)
    fake.async_fail(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.async_payment_failed")

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.FAILED
    assert books_balance(topup) == 0


def test_an_expired_session_closes_the_top_up(fake, user):
    topup = start(user)
    fake.expire(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.expired")

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.EXPIRED
    assert topup_checkout_refresh(topup=topup) == "expired"


def test_cancelling_at_checkout_expires_the_session_so_it_cannot_be_paid(fake, user):
    topup = start(user)

    topup = topup_checkout_cancel(topup=topup)

    assert topup.status == TopUp.Status.EXPIRED
    assert topup.status_detail == "Cancelled at checkout; nothing was charged."
    assert fake.session(topup.stripe_checkout_session_id)["status"] == "expired"
    [delivery] = settled(fake, "checkout.session.expired")
    assert delivery["status"] == 200
    assert StripeEvent.objects.get().outcome == "ignored: top-up already expired"


def test_a_paid_session_is_not_cancelled(fake, user):
    topup = start(user)
    fake.pay(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.completed")
    topup.refresh_from_db()

    assert topup_checkout_cancel(topup=topup).status == TopUp.Status.PAID


def test_a_webhook_failing_mid_way_is_retried_by_stripe_and_credits_once(
    fake,
    user,
    ledger_fails_once,
):
    topup = start(user)
    fake.pay(topup.stripe_checkout_session_id)

    deliveries = settled(fake, "checkout.session.completed", count=2)

    assert [d["status"] for d in deliveries] == [500, 200]
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
    assert books_balance(topup) == TWENTY
    assert StripeEvent.objects.count() == 1


def paid(fake: FakeStripe, user) -> TopUp:
    topup = start(user)
    fake.pay(topup.stripe_checkout_session_id)
    settled(fake, "checkout.session.completed")
    topup.refresh_from_db()
    return topup


@pytest.fixture
def staff_admin(staff_client, staff_user):
    return staff_client, staff_user


def refund_in_admin(client, topup: TopUp, amount_usd: str, reason: str = "customer asked"):
    return client.post(
        reverse("admin:billing_topup_changelist"),
        {
            "action": "refund",
            "select_across": "0",
            "_selected_action": [topup.pk],
            "amount_usd": amount_usd,
            "reason": reason,
            "apply": "Refund",
        },
    )


def test_staff_refund_from_the_admin_refunds_the_card_and_books_it_once(fake, user, staff_admin):
    client, staff = staff_admin
    topup = paid(fake, user)

    response = refund_in_admin(client, topup, "5.00")

    assert response.status_code == 302
    settled(fake, "charge.refunded")
    refund = TopUpRefund.objects.get()
    assert (refund.amount_micros, refund.debited_micros, refund.created_by) == (
        5_000_000,
        5_000_000,
        staff,
    )
    entry = refund.ledger_entry
    assert (entry.kind, entry.amount_micros, entry.created_by) == ("refund", -5_000_000, staff)
    assert StripeEvent.objects.get(type="charge.refunded").outcome == "refunds recorded: 0"
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_micros) == (TopUp.Status.PAID, 5_000_000)
    assert books_balance(topup) == 15_000_000


def test_the_admin_refuses_to_refund_more_than_is_left(fake, user, staff_admin):
    client, _ = staff_admin
    topup = paid(fake, user)

    response = refund_in_admin(client, topup, "20.01")

    assert response.status_code == 200
    assert "At most $20.00 is left to refund." in response.content.decode()
    assert not TopUpRefund.objects.exists()
    assert fake.events("charge.refunded") == []


def test_a_refund_made_in_stripes_dashboard_arrives_as_an_event(fake, user):
    topup = paid(fake, user)

    fake.refund(topup.stripe_payment_intent_id, 2000)
    settled(fake, "charge.refunded")

    topup.refresh_from_db()
    assert (topup.status, topup.refunded_micros) == (TopUp.Status.REFUNDED, TWENTY)
    refund = TopUpRefund.objects.get()
    assert refund.created_by is None
    assert books_balance(topup) == 0
