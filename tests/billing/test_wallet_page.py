"""The wallet pages: balance and debt, top-up form (against the fake Stripe), the alert threshold,
top-up history, the ledger's filters, pages and CSV, and the success and cancel pages; owner
vs outsider on every one."""

import json
import time
from datetime import UTC, datetime

import pytest
from django.core import mail
from django.test import override_settings
from freezegun import freeze_time

from billing.models import LedgerEntry, TopUp, Wallet
from billing.services import ledger_post, wallet_get_or_create
from fakestripe.server import FakeStripe, sign_payload
from tests.factories import PaidTopUpFactory, TopUpFactory, UserFactory, WalletFactory

pytestmark = pytest.mark.django_db

FAKE_API_KEY = "sk_test_wallet_pages"
FAKE_WEBHOOK_SECRET = "whsec_wallet_pages"


@pytest.fixture(scope="module")
def fake_server():
    """One fake Stripe for the module; it records events and delivers none (the tests hand
    them to the webhook through the test client, like Stripe would)."""
    with FakeStripe(api_key=FAKE_API_KEY, webhook_url=None) as server:
        yield server


@pytest.fixture
def fake_stripe(fake_server):
    """The fake Stripe, fresh, with the app pointed at it."""
    fake_server.reset()
    with override_settings(
        STRIPE_SECRET_KEY=FAKE_API_KEY,
        STRIPE_API_BASE=fake_server.url,
        STRIPE_WEBHOOK_SECRET=FAKE_WEBHOOK_SECRET,
    ):
        yield fake_server


def deliver_events(client, fake: FakeStripe, event_type: str) -> None:
    """Post each recorded event of this type to the app's webhook, signed as Stripe signs."""
    for record in fake.events(event_type):
        body = json.dumps(record["event"])
        signature = sign_payload(body, FAKE_WEBHOOK_SECRET, int(time.time()))
        response = client.post(
            "/billing/stripe/webhook/",
            data=body,
            content_type="application/json",
            headers={"Stripe-Signature": signature},
        )
        assert response.status_code == 200, response.content


def start_topup(client, amount_usd: str = "20.00") -> TopUp:
    response = client.post("/wallet/topup/", {"amount_usd": amount_usd})
    assert response.status_code == 303, response.content.decode()
    topup = TopUp.objects.get()
    assert response["Location"] == topup.checkout_url
    return topup


def post_entry(wallet: Wallet, kind: str, amount_micros: int, key: str, **extra) -> LedgerEntry:
    entry, _ = ledger_post(
        wallet=wallet, kind=kind, amount_micros=amount_micros, idempotency_key=key, **extra
    )
    return entry


# --- balance ------------------------------------------------------------------------------------


def test_the_wallet_shows_balance_held_available_and_no_debt_by_default(owner_client, owner):
    wallet = wallet_get_or_create(user=owner)
    post_entry(wallet, "grant", 12_500_000, "g1", description="Welcome credit")
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=2_250_000)

    content = owner_client.get("/wallet/").content.decode()

    assert '<dd id="wallet-balance">$12.50</dd>' in content
    assert '<dd id="wallet-held">$2.25</dd>' in content
    assert '<dd id="wallet-available">$10.25</dd>' in content
    assert "wallet-debt" not in content


def test_a_debt_is_shown_with_what_it_means(owner_client, owner):
    WalletFactory(user=owner, debt_micros=3_400_000)

    content = owner_client.get("/wallet/").content.decode()

    assert '<dd id="wallet-debt">$3.40</dd>' in content
    assert (
        "A refund took back $3.40 more than your balance held: that credit had already been "
        "spent. Your next top-up pays this debt first; the rest is added to your balance."
    ) in content


def test_the_wallet_page_needs_a_signed_in_user(client):
    for path in [
        "/wallet/",
        "/wallet/ledger.csv",
        "/wallet/topup/success/?session_id=cs_x",
        "/wallet/topup/cancel/?topup=1",
        "/wallet/receipts/1/",
        "/wallet/receipts/1.pdf",
    ]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/"), path


def test_the_wallet_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    wallet = wallet_get_or_create(user=owner)
    staff = UserFactory(email="staff@example.com", is_staff=True)
    for n in range(30):
        post_entry(wallet, "grant", 1_000_000, f"g{n}", description=f"Grant {n}", created_by=staff)
    PaidTopUpFactory.create_batch(5, wallet=wallet)
    TopUpFactory.create_batch(5, wallet=wallet, checkout_url="https://checkout.example/c/1")

    # Session, user, wallet, one ledger page (with its staff users), top-ups, header balance.
    with django_assert_max_num_queries(6):
        response = owner_client.get("/wallet/?kind=grant&from=2000-01-01")

    assert response.status_code == 200
    assert len(response.context["entries"]) == 30


# --- top-up form --------------------------------------------------------------------------------


def test_the_top_up_form_offers_the_presets_and_states_the_limits(owner_client):
    content = owner_client.get("/wallet/").content.decode()

    for amount in ["10.00", "20.00", "50.00", "100.00"]:
        assert f'name="amount_usd" value="{amount}" aria-label="Top up ${amount}"' in content
    assert "From $5.00 to $10000.00, in whole cents." in content


@override_settings(TOPUP_PRESETS_USD="25, 5000, 20000", TOPUP_MIN_USD="10", TOPUP_MAX_USD="5000")
def test_presets_and_limits_come_from_the_settings(owner_client):
    content = owner_client.get("/wallet/").content.decode()

    assert 'value="25.00"' in content
    assert 'value="5000.00"' in content
    # Outside the limits: left out rather than offered and refused.
    assert 'value="20000.00"' not in content
    assert 'value="10.00"' not in content
    assert "From $10.00 to $5000.00, in whole cents." in content


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("", "This field is required."),
        ("twenty", "Enter an amount in US dollars, such as 25 or 25.50."),
        ("NaN", "Enter an amount in US dollars, such as 25 or 25.50."),
        ("4.99", "The smallest top-up is $5.00."),
        ("10000.01", "The largest top-up is $10000.00."),
        ("20.005", "Enter whole cents, at most 2 decimals (for example 25.50)."),
    ],
)
def test_a_wrong_amount_is_a_field_error_and_starts_nothing(owner_client, amount, message):
    response = owner_client.post("/wallet/topup/", {"amount_usd": amount})

    assert response.status_code == 200
    assert response.context["topup_form"].errors == {"amount_usd": [message]}
    assert message in response.content.decode()
    assert TopUp.objects.count() == 0


def test_a_custom_amount_starts_a_checkout_and_redirects_to_it(owner_client, owner, fake_stripe):
    topup = start_topup(owner_client, "$1,234.56")

    assert topup.user == owner
    assert topup.amount_micros == 1_234_560_000
    assert topup.status == TopUp.Status.PENDING
    session = fake_stripe.session(topup.stripe_checkout_session_id)
    assert topup.checkout_url == session["url"]
    assert topup.checkout_url.startswith(f"{fake_stripe.url}/c/pay/cs_")
    assert session["amount_total"] == 123_456
    assert session["success_url"] == (
        "http://testserver/wallet/topup/success/?session_id={CHECKOUT_SESSION_ID}"
    )
    # Stripe fills in no placeholder here: the top-up's own id says which to cancel.
    assert session["cancel_url"] == f"http://testserver/wallet/topup/cancel/?topup={topup.pk}"


def test_a_preset_button_starts_a_checkout_of_its_amount(owner_client, fake_stripe):
    topup = start_topup(owner_client, "50.00")

    assert topup.amount_micros == 50_000_000


def test_stripe_out_of_reach_is_said_on_the_page_and_nothing_is_charged(owner_client):
    with override_settings(STRIPE_API_BASE="http://127.0.0.1:9", STRIPE_SECRET_KEY="sk_test_x"):
        response = owner_client.post("/wallet/topup/", {"amount_usd": "20"})

    assert response.status_code == 200
    content = response.content.decode()
    assert (
        "Payments are unavailable right now and nothing was charged; try again in a minute."
        in content
    )
    topup = TopUp.objects.get()
    assert topup.status == TopUp.Status.FAILED
    assert topup.checkout_url == ""


def test_the_top_up_form_only_takes_posts(owner_client):
    assert owner_client.get("/wallet/topup/").status_code == 405


# --- threshold ----------------------------------------------------------------------------------


def test_the_threshold_form_sets_the_alert(owner_client, owner):
    WalletFactory(user=owner)

    response = owner_client.post("/wallet/threshold/", {"threshold_usd": "7.5"})

    assert response.status_code == 303
    assert response["Location"] == "/wallet/#alert-threshold"
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 7_500_000
    content = owner_client.get("/wallet/").content.decode()
    assert "You will be alerted when your balance drops below $7.50." in content
    assert "an alert when your balance drops below <strong>$7.50</strong>" in content
    assert 'name="threshold_usd" value="7.50"' in content


def test_an_empty_threshold_turns_the_alert_off(owner_client, owner):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)

    response = owner_client.post("/wallet/threshold/", {"threshold_usd": ""})

    assert response.status_code == 303
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros is None
    content = owner_client.get("/wallet/").content.decode()
    assert "The low-balance alert is off." in content
    assert "Off: no alert when your balance runs low." in content


def test_a_user_without_a_wallet_can_set_a_threshold(owner_client, owner):
    owner_client.post("/wallet/threshold/", {"threshold_usd": "3"})

    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 3_000_000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "Ensure this value is greater than or equal to 0."),
        ("lots", "Enter a number."),
    ],
)
def test_a_wrong_threshold_is_a_field_error_and_changes_nothing(
    owner_client, owner, value, message
):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)

    response = owner_client.post("/wallet/threshold/", {"threshold_usd": value})

    assert response.status_code == 200
    assert response.context["threshold_form"].errors == {"threshold_usd": [message]}
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 5_000_000


def test_the_threshold_is_set_on_the_users_own_wallet_only(client, owner, outsider):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)
    client.force_login(outsider)

    client.post("/wallet/threshold/", {"threshold_usd": "1"})

    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 5_000_000
    assert Wallet.objects.get(user=outsider).low_balance_threshold_micros == 1_000_000


# --- top-up history -----------------------------------------------------------------------------


def test_the_history_shows_each_top_up_with_its_state_and_receipt(owner_client, owner, outsider):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])
    wallet = WalletFactory(user=owner)
    paid = PaidTopUpFactory(
        wallet=wallet,
        amount_micros=20_000_000,
        refunded_micros=5_000_000,
        receipt_number="TB-202612-000007",
        paid_at=datetime(2026, 12, 1, 15, 30, tzinfo=UTC),
    )
    TopUpFactory(
        wallet=wallet,
        status=TopUp.Status.EXPIRED,
        status_detail="The checkout expired before payment; nothing was charged.",
    )
    TopUpFactory(wallet=wallet, checkout_url="https://checkout.example/c/pay/cs_open")
    PaidTopUpFactory(wallet=WalletFactory(user=outsider), receipt_number="TB-OUTSIDER")

    content = owner_client.get("/wallet/").content.decode()

    assert (
        f'<a href="/wallet/receipts/{paid.pk}/" aria-label="Receipt TB-202612-000007">' in content
    )
    assert f'<a href="/wallet/receipts/{paid.pk}.pdf"' in content
    # Paid at 15:30 UTC is 00:30 the next day in Tokyo.
    assert "2026-12-02 00:30:00" in content
    assert '<td class="num">$5.00</td>' in content
    assert (
        '<span class="topup-detail">The checkout expired before payment; nothing was charged.'
        "</span>"
    ) in content
    assert '<a href="https://checkout.example/c/pay/cs_open">Continue payment</a>' in content
    assert "TB-OUTSIDER" not in content


# --- ledger -------------------------------------------------------------------------------------


@pytest.fixture
def ledger(owner):
    """Five entries of the owner (New York) on three local days, and one of an outsider."""
    owner.time_zone = "America/New_York"
    owner.save(update_fields=["time_zone"])
    wallet = WalletFactory(user=owner)
    staff = UserFactory(email="staff@example.com", is_staff=True)
    times_and_entries = [
        # 2026-11-30 21:00 in New York.
        ("2026-12-01T02:00:00Z", ("grant", 10_000_000, "g1"), {"description": "Welcome credit"}),
        # 2026-12-01 09:00 in New York.
        ("2026-12-01T14:00:00Z", ("topup", 20_000_000, "t1"), {"reference": "cs_1"}),
        ("2026-12-01T15:00:00Z", ("usage", -1_234, "u1"), {"reference": "req_1"}),
        # 2026-12-01 22:00 in New York, 2026-12-02 in UTC.
        ("2026-12-02T03:00:00Z", ("usage", -5_000, "u2"), {"reference": "req_2"}),
        # 2026-12-02 10:00 in New York.
        (
            "2026-12-02T15:00:00Z",
            ("adjustment", -500_000, "a1"),
            {"description": "=Correction", "created_by": staff},
        ),
    ]
    entries = []
    for when, (kind, amount, key), extra in times_and_entries:
        with freeze_time(when):
            entries.append(post_entry(wallet, kind, amount, key, **extra))
    with freeze_time("2026-12-01T16:00:00Z"):
        post_entry(WalletFactory(), "grant", 99_000_000, "outsider", description="Not yours")
    return entries


def ledger_keys(response) -> list[str]:
    return [entry.idempotency_key for entry in response.context["entries"]]


def test_the_ledger_lists_the_owners_entries_newest_first_in_their_zone(owner_client, ledger):
    response = owner_client.get("/wallet/")

    assert ledger_keys(response) == ["a1", "u2", "u1", "t1", "g1"]
    content = response.content.decode()
    assert "2026-12-02 10:00:00" in content
    assert "2026-11-30 21:00:00" in content
    assert '<td class="num amount-credit">+$20.00</td>' in content
    assert '<td class="num amount-debit">-$0.50</td>' in content
    assert '<td class="num">$29.493766</td>' in content
    assert "· by staff@example.com" in content
    assert "Not yours" not in content


@pytest.mark.parametrize(
    ("query", "keys"),
    [
        ("kind=usage", ["u2", "u1"]),
        ("from=2026-12-01", ["a1", "u2", "u1", "t1"]),
        ("to=2026-12-01", ["u2", "u1", "t1", "g1"]),
        ("from=2026-12-01&to=2026-12-01", ["u2", "u1", "t1"]),
        ("kind=usage&from=2026-12-02", []),
        ("from=2026-12-01T09:30", ["a1", "u2", "u1"]),
    ],
)
def test_the_ledger_filters_by_kind_and_days_of_the_users_zone(owner_client, ledger, query, keys):
    response = owner_client.get(f"/wallet/?{query}")

    assert ledger_keys(response) == keys


def test_no_matching_entries_says_so_with_a_way_back(owner_client, ledger):
    content = owner_client.get("/wallet/?kind=refund").content.decode()

    assert "No entries match these filters." in content


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kind=bonus", "kind is one of topup, usage, refund, grant, adjustment."),
        (
            "from=yesterday",
            "'yesterday' is not a date or time (use 2026-12-01 or 2026-12-01T14:30).",
        ),
        ("from=2026-12-03&to=2026-12-01", "'Until' must not be before 'From'."),
    ],
)
def test_a_wrong_filter_is_explained_and_lists_nothing(owner_client, ledger, query, message):
    response = owner_client.get(f"/wallet/?{query}")

    assert response.status_code == 200
    assert response.context["entries"] == []
    content = response.content.decode()
    assert (
        f'<p class="errorlist" role="alert" id="ledger-filter-error">{message}'
        in content.replace("&#x27;", "'")
    )
    assert "Fix the filter above to see the ledger." in content


def test_the_ledger_pages_by_100_and_the_links_keep_the_filters(owner_client, owner):
    wallet = WalletFactory(user=owner)
    for n in range(105):
        post_entry(wallet, "grant", 1_000, f"g{n}")
    post_entry(wallet, "usage", -1, "u0")

    first = owner_client.get("/wallet/?kind=grant")
    next_query = first.context["next_query"]
    second = owner_client.get(f"/wallet/?{next_query}")

    assert ledger_keys(first) == [f"g{n}" for n in range(104, 4, -1)]
    assert next_query.startswith("kind=grant&cursor=")
    assert f'href="/wallet/?{next_query}#ledger-title" rel="next">Older entries</a>' in (
        first.content.decode().replace("&amp;", "&")
    )
    assert ledger_keys(second) == ["g4", "g3", "g2", "g1", "g0"]
    assert second.context["next_query"] == ""
    assert 'href="/wallet/?kind=grant#ledger-title">Newest entries</a>' in second.content.decode()


def test_a_forged_page_link_is_explained(owner_client, ledger):
    response = owner_client.get("/wallet/?cursor=not-a-cursor")

    assert response.context["entries"] == []
    assert "This page link is not valid; start again from the newest rows." in (
        response.content.decode()
    )


def test_the_csv_has_the_filtered_ledger_in_the_users_zone(owner_client, ledger):
    response = owner_client.get("/wallet/ledger.csv?from=2026-12-01")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="tokenbyte-ledger-')
    assert b"".join(response.streaming_content).decode().splitlines() == [
        "time,kind,description,reference,amount_usd,balance_after_usd,created_by",
        "2026-12-02T10:00:00-05:00,adjustment,'=Correction,,-0.500000,29.493766,staff@example.com",
        "2026-12-01T22:00:00-05:00,usage,,req_2,-0.005000,29.993766,",
        "2026-12-01T10:00:00-05:00,usage,,req_1,-0.001234,29.998766,",
        "2026-12-01T09:00:00-05:00,topup,,cs_1,20.000000,30.000000,",
    ]


def test_the_csv_of_a_user_without_a_wallet_is_its_header(owner_client):
    response = owner_client.get("/wallet/ledger.csv")

    assert b"".join(response.streaming_content).decode() == (
        "time,kind,description,reference,amount_usd,balance_after_usd,created_by\n"
    )


def test_the_outsiders_csv_has_none_of_the_owners_entries(client, outsider, ledger):
    client.force_login(outsider)

    body = b"".join(client.get("/wallet/ledger.csv").streaming_content).decode()

    assert body.splitlines() == [
        "time,kind,description,reference,amount_usd,balance_after_usd,created_by"
    ]


def test_a_csv_with_a_wrong_filter_is_a_400(owner_client, ledger):
    response = owner_client.get("/wallet/ledger.csv?kind=bonus")

    assert response.status_code == 400
    assert response.content.decode() == "kind is one of topup, usage, refund, grant, adjustment."


# --- success and cancel pages -------------------------------------------------------------------


def test_the_success_page_follows_a_payment_until_it_is_credited(owner_client, owner, fake_stripe):
    topup = start_topup(owner_client, "20")
    url = f"/wallet/topup/success/?session_id={topup.stripe_checkout_session_id}"

    before = owner_client.get(url)
    fake_stripe.pay(topup.stripe_checkout_session_id)
    confirming = owner_client.get(url)
    deliver_events(owner_client, fake_stripe, "checkout.session.completed")
    credited = owner_client.get(url)

    assert "Not paid yet." in before.content.decode()
    assert f'<a class="btn" href="{topup.checkout_url}">Continue payment</a>' in (
        before.content.decode()
    )
    assert '<meta http-equiv="refresh"' not in before.content.decode()
    assert "Payment received, confirming…" in confirming.content.decode()
    assert '<meta http-equiv="refresh" content="2">' in confirming.content.decode()
    content = credited.content.decode()
    topup.refresh_from_db()
    assert "$20.00 added to your balance" in content
    assert '<dd id="topup-balance">$20.00</dd>' in content
    assert f'<a href="/wallet/receipts/{topup.pk}/">{topup.receipt_number}</a>' in content
    assert '<meta http-equiv="refresh"' not in content
    assert credited["Cache-Control"] == "no-store"


@pytest.fixture
def eager_tasks():
    """Celery tasks run in place, as a worker would run them (the embedded default's mode)."""
    from tokenbyte.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.mark.usefixtures("eager_tasks")
def test_a_credited_top_up_emails_its_receipt_once(
    owner_client, owner, fake_stripe, django_capture_on_commit_callbacks
):
    # The webhook queues the receipt task after its commit; the task sends it.
    topup = start_topup(owner_client, "20")
    fake_stripe.pay(topup.stripe_checkout_session_id)

    with django_capture_on_commit_callbacks(execute=True):
        deliver_events(owner_client, fake_stripe, "checkout.session.completed")
    with django_capture_on_commit_callbacks(execute=True):
        deliver_events(owner_client, fake_stripe, "checkout.session.completed")

    topup.refresh_from_db()
    assert [email.subject for email in mail.outbox] == [
        f"Your TokenByte receipt {topup.receipt_number}"
    ]
    assert mail.outbox[0].to == ["owner@example.com"]
    assert mail.outbox[0].attachments[0][0] == f"receipt-{topup.receipt_number}.pdf"
    assert topup.receipt_emailed_at is not None


def test_the_success_page_says_a_bank_payment_is_processing(owner_client, fake_stripe):
    topup = start_topup(owner_client, "20")
    fake_stripe.pay_async(topup.stripe_checkout_session_id)

    response = owner_client.get(
        f"/wallet/topup/success/?session_id={topup.stripe_checkout_session_id}"
    )

    assert (
        "Your bank payment is processing; we will credit your balance when it clears."
        in response.content.decode()
    )
    assert '<meta http-equiv="refresh"' not in response.content.decode()


def test_the_success_page_of_a_failed_top_up_says_why(owner_client, owner):
    topup = TopUpFactory(
        wallet=WalletFactory(user=owner),
        status=TopUp.Status.FAILED,
        stripe_checkout_session_id="cs_failed",
        status_detail="The bank payment failed; nothing was charged.",
    )

    content = owner_client.get("/wallet/topup/success/?session_id=cs_failed").content.decode()

    assert "This top-up failed; nothing was added to your balance." in content
    assert '<p id="topup-detail">The bank payment failed; nothing was charged.</p>' in content
    assert topup.status == TopUp.Status.FAILED


@pytest.mark.parametrize("page", ["success", "cancel"])
def test_another_users_unknown_or_missing_session_is_a_404(client, owner, outsider, page):
    PaidTopUpFactory(wallet=WalletFactory(user=owner), stripe_checkout_session_id="cs_owner")
    client.force_login(outsider)

    for query in ["?session_id=cs_owner", "?session_id=cs_unknown", "", "?session_id="]:
        assert client.get(f"/wallet/topup/{page}/{query}").status_code == 404, query


def test_cancelling_closes_the_session_and_says_nothing_was_charged(
    owner_client, owner, fake_stripe
):
    topup = start_topup(owner_client, "20")

    response = owner_client.get(f"/wallet/topup/cancel/?topup={topup.pk}")

    assert response.status_code == 200
    content = response.content.decode()
    assert "Top-up cancelled; nothing was charged." in content
    assert '<a class="btn" href="/wallet/">Back to the wallet</a>' in content
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.EXPIRED
    assert fake_stripe.session(topup.stripe_checkout_session_id)["status"] == "expired"


def test_the_outsider_cannot_cancel_the_owners_top_up(client, owner, outsider, fake_stripe):
    client.force_login(owner)
    topup = start_topup(client, "20")
    client.force_login(outsider)

    response = client.get(f"/wallet/topup/cancel/?topup={topup.pk}")

    assert response.status_code == 404
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING
    assert fake_stripe.session(topup.stripe_checkout_session_id)["status"] == "open"


def test_cancelling_a_paid_top_up_leaves_it_paid(owner_client, owner):
    topup = PaidTopUpFactory(wallet=WalletFactory(user=owner))

    content = owner_client.get(f"/wallet/topup/cancel/?topup={topup.pk}").content.decode()

    assert "This top-up was already paid" in content
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PAID
