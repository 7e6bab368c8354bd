"""/api/ for card top-ups and the alert threshold: start a top-up (against the fake Stripe), read
one with its receipt links, list them, set the threshold; owner vs outsider."""

from datetime import UTC, datetime

import pytest
from django.test import override_settings

from billing.models import TopUp, Wallet
from tests.billing.test_wallet_page import fake_server, fake_stripe  # noqa: F401
from tests.factories import (
    PaidTopUpFactory,
    PersonalAccessTokenFactory,
    TopUpFactory,
    WalletFactory,
)

pytestmark = pytest.mark.django_db


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {PersonalAccessTokenFactory(user=user).secret}"}


def error(code: str, message: str, fields: dict | None = None, kind="invalid_request") -> dict:
    return {"error": {"type": kind, "code": code, "message": message, "fields": fields or {}}}


# --- start a top-up -----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [{"amount_usd": "20.00"}, {"amount_micros": 20_000_000}])
def test_a_top_up_starts_a_checkout_and_answers_where_to_pay(client, owner, request, amount):
    fake = request.getfixturevalue("fake_stripe")
    response = client.post(
        "/api/topups/", amount, headers=bearer(owner), content_type="application/json"
    )

    assert response.status_code == 201, response.content
    topup = TopUp.objects.get()
    assert topup.user == owner
    assert response.json() == {
        "id": topup.pk,
        "status": "pending",
        "status_detail": "",
        "amount_micros": 20_000_000,
        "amount_usd": "20.000000",
        "refunded_micros": 0,
        "refunded_usd": "0.000000",
        "checkout_url": topup.checkout_url,
        "receipt_number": None,
        "receipt_url": None,
        "receipt_pdf_url": None,
        "created_at": topup.created_at.isoformat().replace("+00:00", "Z"),
        "paid_at": None,
    }
    session = fake.session(topup.stripe_checkout_session_id)
    assert session["url"] == topup.checkout_url
    assert session["success_url"] == (
        "http://testserver/wallet/topup/success/?session_id={CHECKOUT_SESSION_ID}"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {},
            error("invalid", "Send either amount_micros or amount_usd."),
        ),
        (
            {"amount_usd": "20", "amount_micros": 20_000_000},
            error("invalid", "Send either amount_micros or amount_usd."),
        ),
        (
            {"amount_usd": "4.99"},
            error(
                "invalid",
                "amount_usd: The smallest top-up is $5.00. (Limits: $5.00 to $10000.00.)",
                {"amount_usd": ["The smallest top-up is $5.00. (Limits: $5.00 to $10000.00.)"]},
            ),
        ),
        (
            {"amount_micros": 10_000_010_000},
            error(
                "invalid",
                "amount_micros: The largest top-up is $10000.00. (Limits: $5.00 to $10000.00.)",
                {
                    "amount_micros": [
                        "The largest top-up is $10000.00. (Limits: $5.00 to $10000.00.)"
                    ]
                },
            ),
        ),
        (
            {"amount_micros": 20_000_001},
            error(
                "invalid",
                "amount_micros: Enter whole cents, at most 2 decimals (for example 25.50). "
                "(Limits: $5.00 to $10000.00.)",
                {
                    "amount_micros": [
                        "Enter whole cents, at most 2 decimals (for example 25.50). "
                        "(Limits: $5.00 to $10000.00.)"
                    ]
                },
            ),
        ),
        (
            {"amount_usd": "twenty"},
            error(
                "invalid",
                "amount_usd: A valid number is required.",
                {"amount_usd": ["A valid number is required."]},
            ),
        ),
    ],
)
def test_a_wrong_amount_is_a_400_and_starts_nothing(owner_client, body, expected):
    response = owner_client.post("/api/topups/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == expected
    assert TopUp.objects.count() == 0


def test_stripe_out_of_reach_is_a_503(owner_client):
    with override_settings(STRIPE_API_BASE="http://127.0.0.1:9", STRIPE_SECRET_KEY="sk_test_x"):
        response = owner_client.post(
            "/api/topups/", {"amount_usd": "20"}, content_type="application/json"
        )

    assert response.status_code == 503
    assert response.json() == error(
        "payments_unavailable",
        "Payments are unavailable right now and nothing was charged; try again in a minute.",
        kind="server_error",
    )
    assert TopUp.objects.get().status == TopUp.Status.FAILED


# --- read ---------------------------------------------------------------------------------------


@pytest.fixture
def paid(owner):
    return PaidTopUpFactory(
        wallet=WalletFactory(user=owner),
        amount_micros=50_000_000,
        refunded_micros=10_000_000,
        receipt_number="TB-202612-000009",
        paid_at=datetime(2026, 12, 1, 12, tzinfo=UTC),
        created_at=datetime(2026, 12, 1, 11, 59, tzinfo=UTC),
        checkout_url="",
    )


def test_a_top_up_is_read_with_its_receipt_links(client, owner, paid):
    response = client.get(f"/api/topups/{paid.pk}/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        "id": paid.pk,
        "status": "paid",
        "status_detail": "",
        "amount_micros": 50_000_000,
        "amount_usd": "50.000000",
        "refunded_micros": 10_000_000,
        "refunded_usd": "10.000000",
        "checkout_url": None,
        "receipt_number": "TB-202612-000009",
        "receipt_url": f"http://testserver/wallet/receipts/{paid.pk}/",
        "receipt_pdf_url": f"http://testserver/wallet/receipts/{paid.pk}.pdf",
        "created_at": "2026-12-01T11:59:00Z",
        "paid_at": "2026-12-01T12:00:00Z",
    }


def test_a_closed_top_up_says_why_and_offers_no_checkout(owner_client, owner):
    expired = TopUpFactory(
        wallet=WalletFactory(user=owner),
        status=TopUp.Status.EXPIRED,
        status_detail="Cancelled at checkout; nothing was charged.",
        checkout_url="https://checkout.example/c/pay/cs_old",
    )

    body = owner_client.get(f"/api/topups/{expired.pk}/").json()

    assert body["status"] == "expired"
    assert body["status_detail"] == "Cancelled at checkout; nothing was charged."
    assert body["checkout_url"] is None
    assert body["receipt_url"] is None


def test_another_users_top_up_is_a_404(client, outsider, paid):
    response = client.get(f"/api/topups/{paid.pk}/", headers=bearer(outsider))

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_the_list_carries_the_same_fields(owner_client, paid):
    [row] = owner_client.get("/api/topups/").json()["results"]

    assert row == owner_client.get(f"/api/topups/{paid.pk}/").json()


# --- the alert threshold ------------------------------------------------------------------------


def test_patching_the_wallet_sets_the_threshold(client, owner):
    WalletFactory(user=owner)

    response = client.patch(
        "/api/wallet/",
        {"low_balance_threshold_micros": 2_500_000},
        headers=bearer(owner),
        content_type="application/json",
    )

    assert response.status_code == 200
    assert response.json()["low_balance_threshold_micros"] == 2_500_000
    assert response.json()["low_balance_threshold_usd"] == "2.500000"
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 2_500_000


def test_null_turns_the_alert_off(owner_client, owner):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)

    response = owner_client.patch(
        "/api/wallet/", {"low_balance_threshold_micros": None}, content_type="application/json"
    )

    assert response.status_code == 200
    assert response.json()["low_balance_threshold_micros"] is None
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros is None


def test_a_user_without_a_wallet_gets_one_with_the_threshold(owner_client, owner):
    owner_client.patch(
        "/api/wallet/", {"low_balance_threshold_micros": 1_000_000}, content_type="application/json"
    )

    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 1_000_000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"low_balance_threshold_micros": -1}, "Ensure this value is greater than or equal to 0."),
        ({}, "This field is required."),
    ],
)
def test_a_wrong_threshold_is_a_400_and_changes_nothing(owner_client, owner, body, message):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)

    response = owner_client.patch("/api/wallet/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"low_balance_threshold_micros": [message]}
    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 5_000_000


def test_the_threshold_changes_only_the_callers_wallet(client, owner, outsider):
    WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)

    client.patch(
        "/api/wallet/",
        {"low_balance_threshold_micros": 1},
        headers=bearer(outsider),
        content_type="application/json",
    )

    assert Wallet.objects.get(user=owner).low_balance_threshold_micros == 5_000_000
    assert Wallet.objects.get(user=outsider).low_balance_threshold_micros == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/topups/"), ("get", "/api/topups/1/"), ("patch", "/api/wallet/")],
)
def test_the_new_endpoints_need_authentication(client, method, path):
    response = getattr(client, method)(path, {}, content_type="application/json")

    assert response.status_code == 401
