"""/api/ for billing: the wallet, its ledger, top-ups and alerts; owner vs outsider, by access
token and by session."""

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import Alert, LedgerEntry, Wallet
from billing.services import ledger_post
from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    PersonalAccessTokenFactory,
    TokenGroupFactory,
    TopUpFactory,
    WalletFactory,
)
from tokenbyte.keyset import INVALID_CURSOR

pytestmark = pytest.mark.django_db


def iso(when: datetime | None) -> str | None:
    """A timestamp as the API writes it (UTC, `Z`)."""
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {PersonalAccessTokenFactory(user=user).secret}"}


def post_entry(wallet: Wallet, kind: str, amount_micros: int, key: str, **extra) -> LedgerEntry:
    entry, _ = ledger_post(
        wallet=wallet, kind=kind, amount_micros=amount_micros, idempotency_key=key, **extra
    )
    return entry


@pytest.fixture
def owner_wallet(owner):
    """$12.50 credited in three entries (25 + 0.25 - 12.75); 1.5 held; alert under $5."""
    wallet = WalletFactory(user=owner, low_balance_threshold_micros=5_000_000)
    post_entry(wallet, LedgerEntry.Kind.TOPUP, 25_000_000, "t1", reference="cs_1")
    post_entry(wallet, LedgerEntry.Kind.GRANT, 250_000, "g1", description="Welcome credit")
    post_entry(wallet, LedgerEntry.Kind.USAGE, -12_750_000, "u1", reference="req_1")
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=1_500_000)
    wallet.refresh_from_db()
    return wallet


# --- wallet -------------------------------------------------------------------------------------


def test_the_wallet_shows_balance_held_available_and_the_alert_threshold(
    client, owner, owner_wallet
):
    response = client.get("/api/wallet/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        "balance_micros": 12_500_000,
        "held_micros": 1_500_000,
        "available_micros": 11_000_000,
        "low_balance_threshold_micros": 5_000_000,
        "balance_usd": "12.500000",
        "held_usd": "1.500000",
        "available_usd": "11.000000",
        "low_balance_threshold_usd": "5.000000",
    }


def test_a_user_without_credit_yet_has_an_empty_wallet_with_no_threshold(owner_client):
    response = owner_client.get("/api/wallet/")

    assert response.status_code == 200
    assert response.json() == {
        "balance_micros": 0,
        "held_micros": 0,
        "available_micros": 0,
        "low_balance_threshold_micros": None,
        "balance_usd": "0.000000",
        "held_usd": "0.000000",
        "available_usd": "0.000000",
        "low_balance_threshold_usd": None,
    }


def test_the_outsider_sees_their_own_wallet_not_the_owners(client, outsider, owner_wallet):
    WalletFactory(user=outsider)

    response = client.get("/api/wallet/", headers=bearer(outsider))

    assert response.json()["balance_micros"] == 0


# --- ledger -------------------------------------------------------------------------------------


def test_the_ledger_lists_every_entry_newest_first_with_its_running_balance(
    owner_client, owner_wallet
):
    entries = list(LedgerEntry.objects.filter(wallet=owner_wallet).order_by("-id"))

    response = owner_client.get("/api/wallet/ledger/")

    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {
                "id": entry.pk,
                "kind": kind,
                "amount_micros": amount,
                "amount_usd": amount_usd,
                "balance_after_micros": after,
                "balance_after_usd": after_usd,
                "reference": reference,
                "description": description,
                "created_at": iso(entry.created_at),
            }
            for entry, (kind, amount, amount_usd, after, after_usd, reference, description) in zip(
                entries,
                [
                    ("usage", -12_750_000, "-12.750000", 12_500_000, "12.500000", "req_1", ""),
                    ("grant", 250_000, "0.250000", 25_250_000, "25.250000", "", "Welcome credit"),
                    ("topup", 25_000_000, "25.000000", 25_000_000, "25.000000", "cs_1", ""),
                ],
                strict=True,
            )
        ],
        "next": None,
        "next_cursor": None,
    }


def test_the_ledger_pages_by_cursor_until_the_last_entry(client, owner, owner_wallet):
    headers = bearer(owner)
    ids = list(
        LedgerEntry.objects.filter(wallet=owner_wallet).order_by("-id").values_list("id", flat=True)
    )

    first = client.get("/api/wallet/ledger/?limit=2", headers=headers).json()
    second = client.get(first["next"], headers=headers).json()

    assert [row["id"] for row in first["results"]] == ids[:2]
    assert first["next"] == (
        f"http://testserver/api/wallet/ledger/?cursor={first['next_cursor']}&limit=2"
    )
    assert [row["id"] for row in second["results"]] == ids[2:]
    assert second["next"] is None
    assert second["next_cursor"] is None


def test_a_ledger_cursor_that_does_not_decode_is_a_400_on_cursor(owner_client, owner_wallet):
    response = owner_client.get("/api/wallet/ledger/?cursor=not-a-cursor")

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_request",
            "code": "invalid_cursor",
            "message": INVALID_CURSOR,
            "fields": {"cursor": [INVALID_CURSOR]},
        }
    }


def test_the_outsider_sees_none_of_the_owners_ledger(client, outsider, owner_wallet):
    outsider_wallet = WalletFactory(user=outsider)
    own = post_entry(outsider_wallet, LedgerEntry.Kind.GRANT, 1_000_000, "g-outsider")

    response = client.get("/api/wallet/ledger/", headers=bearer(outsider))

    assert [row["id"] for row in response.json()["results"]] == [own.pk]


def test_a_user_without_a_wallet_has_an_empty_ledger(owner_client):
    response = owner_client.get("/api/wallet/ledger/")

    assert response.json() == {"results": [], "next": None, "next_cursor": None}


# --- top-ups ------------------------------------------------------------------------------------


def test_topups_list_the_owners_card_payments_newest_first(client, owner, outsider):
    wallet = WalletFactory(user=owner)
    now = timezone.now()
    paid = TopUpFactory(
        wallet=wallet,
        amount_micros=20_000_000,
        status="paid",
        receipt_number="TB-0001",
        receipt_url="https://example.com/receipts/1",
        created_at=now - timedelta(days=1),
        paid_at=now - timedelta(days=1),
    )
    pending = TopUpFactory(wallet=wallet, amount_micros=5_000_000, created_at=now)
    TopUpFactory(wallet=WalletFactory(user=outsider))

    response = client.get("/api/topups/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        "count": 2,
        "next": None,
        "previous": None,
        "results": [
            {
                "id": pending.pk,
                "status": "pending",
                "status_detail": "",
                "amount_micros": 5_000_000,
                "amount_usd": "5.000000",
                "refunded_micros": 0,
                "refunded_usd": "0.000000",
                "checkout_url": None,
                "receipt_number": None,
                "receipt_url": None,
                "receipt_pdf_url": None,
                "created_at": iso(now),
                "paid_at": None,
            },
            {
                "id": paid.pk,
                "status": "paid",
                "status_detail": "",
                "amount_micros": 20_000_000,
                "amount_usd": "20.000000",
                "refunded_micros": 0,
                "refunded_usd": "0.000000",
                "checkout_url": None,
                "receipt_number": "TB-0001",
                # The console's printable receipt (and its PDF), not a stored URL.
                "receipt_url": f"http://testserver/wallet/receipts/{paid.pk}/",
                "receipt_pdf_url": f"http://testserver/wallet/receipts/{paid.pk}.pdf",
                "created_at": iso(now - timedelta(days=1)),
                "paid_at": iso(now - timedelta(days=1)),
            },
        ],
    }


def test_the_outsiders_session_lists_none_of_the_owners_topups(client, owner, outsider):
    TopUpFactory(wallet=WalletFactory(user=owner))
    client.force_login(outsider)

    response = client.get("/api/topups/")

    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_topups_page_by_limit_and_offset(owner_client, owner):
    wallet = WalletFactory(user=owner)
    now = timezone.now()
    topups = [
        TopUpFactory(wallet=wallet, created_at=now - timedelta(minutes=minutes))
        for minutes in range(3)
    ]

    response = owner_client.get("/api/topups/?limit=2&offset=1")

    assert response.json()["count"] == 3
    assert [row["id"] for row in response.json()["results"]] == [topups[1].pk, topups[2].pk]
    assert response.json()["previous"] == "http://testserver/api/topups/?limit=2"


# --- alerts -------------------------------------------------------------------------------------


@pytest.fixture
def owner_alerts(owner):
    now = timezone.now()
    key = ApiTokenFactory(owner=owner)
    group = TokenGroupFactory(owner=owner)
    read = AlertFactory(
        user=owner,
        kind=Alert.Kind.GROUP_QUOTA,
        group=group,
        threshold_percent=80,
        message="Group team-a has used 80% of its quota.",
        created_at=now - timedelta(hours=2),
        read_at=now - timedelta(hours=1),
    )
    unread = AlertFactory(
        user=owner,
        kind=Alert.Kind.TOKEN_QUOTA,
        api_token=key,
        threshold_percent=90,
        message="Key ci has used 90% of its quota.",
        created_at=now,
    )
    return {"read": read, "unread": unread, "key": key, "group": group}


def alert_json(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "message": alert.message,
        "key_id": alert.api_token_id,
        "group_id": alert.group_id,
        "threshold_percent": alert.threshold_percent,
        "created_at": iso(alert.created_at),
        "emailed_at": iso(alert.emailed_at),
        "read_at": iso(alert.read_at),
    }


def test_alerts_list_the_owners_alerts_newest_first(client, owner, outsider, owner_alerts):
    AlertFactory(user=outsider)

    response = client.get("/api/alerts/", headers=bearer(owner))

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"] == [alert_json(owner_alerts["unread"]), alert_json(owner_alerts["read"])]
    assert body["results"][0]["key_id"] == owner_alerts["key"].pk
    assert body["results"][1]["group_id"] == owner_alerts["group"].pk


def test_unread_1_lists_only_the_alerts_not_marked_read(owner_client, owner_alerts):
    response = owner_client.get("/api/alerts/?unread=1")

    assert [row["id"] for row in response.json()["results"]] == [owner_alerts["unread"].pk]


def test_marking_an_alert_read_records_when_and_drops_it_from_unread(client, owner, owner_alerts):
    headers = bearer(owner)
    alert = owner_alerts["unread"]

    response = client.post(f"/api/alerts/{alert.pk}/read/", headers=headers)

    alert.refresh_from_db()
    assert response.status_code == 200
    assert alert.read_at is not None
    assert response.json() == alert_json(alert)
    assert client.get("/api/alerts/?unread=1", headers=headers).json()["results"] == []


def test_marking_an_alert_read_again_keeps_the_first_read_time(owner_client, owner_alerts):
    alert = owner_alerts["read"]
    first_read = alert.read_at

    response = owner_client.post(f"/api/alerts/{alert.pk}/read/")

    alert.refresh_from_db()
    assert response.status_code == 200
    assert alert.read_at == first_read
    assert response.json()["read_at"] == iso(first_read)


def test_the_outsider_cannot_mark_the_owners_alert_read_it_is_a_404(client, outsider, owner_alerts):
    alert = owner_alerts["unread"]

    response = client.post(f"/api/alerts/{alert.pk}/read/", headers=bearer(outsider))

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    alert.refresh_from_db()
    assert alert.read_at is None


def test_the_outsider_lists_none_of_the_owners_alerts(client, outsider, owner_alerts):
    response = client.get("/api/alerts/", headers=bearer(outsider))

    assert response.json()["results"] == []


def test_a_session_marks_an_alert_read_like_a_token(owner_client, owner_alerts):
    alert = owner_alerts["unread"]

    response = owner_client.post(f"/api/alerts/{alert.pk}/read/")

    assert response.status_code == 200
    alert.refresh_from_db()
    assert alert.read_at is not None


@pytest.mark.parametrize(
    "path", ["/api/wallet/", "/api/wallet/ledger/", "/api/topups/", "/api/alerts/"]
)
def test_every_billing_list_needs_authentication(client, path):
    response = client.get(path)

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_alert_list_costs_the_same_queries_for_one_alert_or_many(owner_client, owner):
    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert owner_client.get("/api/alerts/").status_code == 200
        return len(queries)

    AlertFactory(user=owner, api_token=ApiTokenFactory(owner=owner))
    one = queries_for_the_list()
    for _ in range(5):
        AlertFactory(
            user=owner, api_token=ApiTokenFactory(owner=owner), group=TokenGroupFactory(owner=owner)
        )
    many = queries_for_the_list()

    assert many == one
