"""Quota and low-balance alerts: once per threshold and period, emailed by a Celery task."""

import email
import email.policy
import socket
import time
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.test import override_settings
from django.utils import timezone

from accounts.models import ApiToken, Membership, TokenGroup
from accounts.scope import Scope
from accounts.services import (
    api_token_create,
    invitation_accept,
    invitation_create,
    organization_create,
    token_group_create,
)
from billing.holds import HoldParts
from billing.models import Alert, LedgerEntry, Wallet
from billing.selectors import alerts_for_user
from billing.services import (
    alert_email_send,
    credit_grant,
    hold_acquire,
    ledger_post,
    quota_alerts_raise,
    quota_reset,
    wallet_get_or_create,
    wallet_low_balance_alert_raise,
)
from tasks.tasks import send_alert_email
from tests.factories import UserFactory
from tokenbyte.celery import app as celery_app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def eager_celery():
    """Run queued tasks at once, as the embedded default does (the suite has a Redis broker)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture
def owner():
    return UserFactory(email="owner@example.com")


def key_with_quota(owner, used: int, quota: int = 1000, **options) -> ApiToken:
    token, _ = api_token_create(owner=owner, name="prod", quota_tokens=quota, **options)
    ApiToken.objects.filter(pk=token.pk).update(quota_used_tokens=used)
    return token


def set_used(obj, used: int) -> None:
    type(obj).objects.filter(pk=obj.pk).update(quota_used_tokens=used)


def test_the_80_percent_alert_is_sent_once(owner):
    token = key_with_quota(owner, used=799)
    assert quota_alerts_raise(key_id=token.pk) == []

    set_used(token, 800)
    [alert] = quota_alerts_raise(key_id=token.pk)
    again = quota_alerts_raise(key_id=token.pk)

    assert again == []
    assert (alert.kind, alert.threshold_percent, alert.user) == ("token_quota", 80, owner)
    assert alert.message == "Your API key 'prod' has used 80% of its token quota of 1,000 tokens."
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["owner@example.com"]
    assert email.subject == f"TokenByte alert: {alert.message}"
    assert alert.message in email.body
    alert.refresh_from_db()
    assert alert.emailed_at is not None
    token.refresh_from_db()
    assert token.quota_alerted_percent == 80


def test_a_jump_past_both_thresholds_sends_both_once_and_a_new_period_sends_them_again(owner):
    token = key_with_quota(owner, used=1000)

    first = quota_alerts_raise(key_id=token.pk)
    repeat = quota_alerts_raise(key_id=token.pk)
    quota_reset(obj=token)
    set_used(token, 850)
    next_period = quota_alerts_raise(key_id=token.pk)

    assert [a.threshold_percent for a in first] == [80, 100]
    assert first[1].message == "Your API key 'prod' has used its whole token quota of 1,000."
    assert repeat == []
    assert [a.threshold_percent for a in next_period] == [80]
    assert len(mail.outbox) == 3
    assert Alert.objects.count() == 3
    assert len({a.dedupe_key for a in Alert.objects.all()}) == 3


def test_what_calls_in_flight_hold_does_not_count_toward_an_alert(owner):
    token = key_with_quota(owner, used=700)
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="test")
    # A call without max_tokens may hold the whole rest of the quota.
    hold_acquire(
        request_id="req_big", wallet_id=wallet.pk, amount_micros=100,
        parts=HoldParts(tokens=300, key_id=token.pk, key_quota=True), lease_seconds=60,
    )  # fmt: skip
    token.refresh_from_db()
    assert token.quota_used_tokens == 1000

    assert quota_alerts_raise(key_id=token.pk) == []
    assert mail.outbox == []


def test_a_quota_too_short_for_the_smallest_call_counts_as_used_up(owner):
    token = key_with_quota(owner, used=975)

    # The relay refused a call whose smallest form needs 29 tokens; 25 are left.
    alerts = quota_alerts_raise(key_id=token.pk, refused_call_tokens=29)

    assert [a.threshold_percent for a in alerts] == [80, 100]


def test_a_refusal_while_enough_is_left_alerts_nothing(owner):
    token = key_with_quota(owner, used=500)

    assert quota_alerts_raise(key_id=token.pk, refused_call_tokens=29) == []


def test_group_alerts_follow_the_groups_own_thresholds(owner):
    group = token_group_create(owner=owner, name="research", quota_tokens=200)
    TokenGroup.objects.filter(pk=group.pk).update(alert_thresholds=[50], quota_used_tokens=120)

    [alert] = quota_alerts_raise(group_id=group.pk)

    assert (alert.kind, alert.group, alert.threshold_percent) == ("group_quota", group, 50)
    assert alert.message == (
        "Your token group 'research' has used 50% of its token quota of 200 tokens."
    )
    assert mail.outbox[0].subject.endswith(alert.message)


def test_a_key_without_thresholds_or_quota_never_alerts(owner):
    silent = key_with_quota(owner, used=1000, quota=1000)
    ApiToken.objects.filter(pk=silent.pk).update(alert_thresholds=[])
    free, _ = api_token_create(owner=owner, name="free")

    assert quota_alerts_raise(key_id=silent.pk) == []
    assert quota_alerts_raise(key_id=free.pk) == []
    assert not Alert.objects.exists()


def _wallet(owner, balance: int, threshold: int) -> Wallet:
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=balance, reason="test")
    Wallet.objects.filter(pk=wallet.pk).update(low_balance_threshold_micros=threshold)
    return wallet


def _spend(wallet: Wallet, micros: int, n: int) -> None:
    ledger_post(
        wallet=wallet, kind=LedgerEntry.Kind.USAGE, amount_micros=-micros,
        idempotency_key=f"usage:test-{n}",
    )  # fmt: skip


def test_the_low_balance_alert_fires_once_per_crossing_and_a_top_up_rearms_it(owner):
    wallet = _wallet(owner, balance=6_000_000, threshold=5_000_000)
    assert wallet_low_balance_alert_raise(wallet_id=wallet.pk) is None  # not below yet

    _spend(wallet, 2_000_000, 1)  # $4
    first = wallet_low_balance_alert_raise(wallet_id=wallet.pk)
    _spend(wallet, 1_000_000, 2)  # $3: the same crossing
    same_crossing = wallet_low_balance_alert_raise(wallet_id=wallet.pk)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="not enough")  # $4
    still_below = wallet_low_balance_alert_raise(wallet_id=wallet.pk)
    credit_grant(wallet=wallet, amount_micros=10_000_000, reason="top-up")  # $14: re-armed
    wallet.refresh_from_db()
    assert wallet.low_balance_alerted_at is None
    _spend(wallet, 10_000_000, 3)  # $4 again
    second = wallet_low_balance_alert_raise(wallet_id=wallet.pk)

    assert first is not None
    assert first.message == "Your balance is $4.00, below your alert threshold of $5.00."
    assert (same_crossing, still_below) == (None, None)
    assert second is not None
    assert second.dedupe_key != first.dedupe_key
    assert [m.subject for m in mail.outbox] == [
        "TokenByte alert: Your balance is $4.00, below your alert threshold of $5.00.",
        "TokenByte alert: Your balance is $4.00, below your alert threshold of $5.00.",
    ]


def test_an_organizations_low_balance_alerts_its_owners_and_admins_not_its_members(owner):
    org = organization_create(user=owner, name="Acme")
    scope = Scope(user=owner, membership=Membership.objects.get(user=owner))
    admin, member = UserFactory(email="admin@example.com"), UserFactory()
    for user, role in ((admin, "admin"), (member, "member")):
        invitation = invitation_create(scope=scope, email=user.email, role=role)
        invitation_accept(invitation=invitation, user=user)
    wallet = wallet_get_or_create(organization=org)
    credit_grant(wallet=wallet, amount_micros=6_000_000, reason="test")
    Wallet.objects.filter(pk=wallet.pk).update(low_balance_threshold_micros=5_000_000)
    mail.outbox.clear()

    _spend(wallet, 2_000_000, 1)
    alert = wallet_low_balance_alert_raise(wallet_id=wallet.pk)

    assert alert is not None
    alerts = Alert.objects.filter(wallet=wallet).order_by("user__email")
    assert [(a.user.email, a.message) for a in alerts] == [
        ("admin@example.com", "The balance of Acme is $4.00, below its alert threshold of $5.00."),
        ("owner@example.com", "The balance of Acme is $4.00, below its alert threshold of $5.00."),
    ]
    assert sorted(m.to[0] for m in mail.outbox) == ["admin@example.com", "owner@example.com"]


def test_a_wallet_without_a_threshold_never_alerts(owner):
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=1, reason="test")

    assert wallet_low_balance_alert_raise(wallet_id=wallet.pk) is None


def test_the_email_task_sends_once_when_run_twice(owner):
    token = key_with_quota(owner, used=800)
    celery_app.conf.task_always_eager = False  # queued on the broker only: run by hand below
    [alert] = quota_alerts_raise(key_id=token.pk)
    celery_app.conf.task_always_eager = True
    assert mail.outbox == []

    first = send_alert_email.apply(args=[alert.pk]).get()
    second = send_alert_email.apply(args=[alert.pk]).get()
    missing = send_alert_email.apply(args=[999_999]).get()

    assert (first, second, missing) == (True, False, False)
    assert len(mail.outbox) == 1


def test_a_failed_send_leaves_the_alert_unsent_for_the_retry(owner):
    token = key_with_quota(owner, used=800)
    with override_settings(EMAIL_BACKEND="tests.billing.test_alerts.FailingBackend"):
        # The task retries and gives up (eagerly here); the alert itself is committed.
        [alert] = quota_alerts_raise(key_id=token.pk)

    alert.refresh_from_db()
    assert alert.emailed_at is None
    assert alert_email_send(alert_id=alert.pk) is True
    alert.refresh_from_db()
    assert alert.emailed_at is not None


class FailingBackend(BaseEmailBackend):
    def send_messages(self, messages):
        raise ConnectionRefusedError("smtp is down")


def test_alerts_are_listed_for_the_dashboard_newest_first(owner):
    token = key_with_quota(owner, used=1000)
    quota_alerts_raise(key_id=token.pk)
    Alert.objects.filter(threshold_percent=80).update(
        created_at=timezone.now() - timedelta(minutes=1)
    )
    other = UserFactory()

    listed = alerts_for_user(user=owner)

    assert [a.threshold_percent for a in listed] == [100, 80]
    assert list(alerts_for_user(user=other)) == []
    Alert.objects.filter(threshold_percent=100).update(read_at=timezone.now())
    assert [a.threshold_percent for a in alerts_for_user(user=owner, unread_only=True)] == [80]


def test_an_owner_who_turned_quota_emails_off_gets_no_quota_email_but_sees_the_alert(owner):
    owner.notify_quota_alerts = False
    owner.save(update_fields=["notify_quota_alerts"])
    token = key_with_quota(owner, used=800)

    [alert] = quota_alerts_raise(key_id=token.pk)
    again = send_alert_email.apply(args=[alert.pk]).get()

    assert again is False
    assert mail.outbox == []
    alert.refresh_from_db()
    assert alert.emailed_at is None  # nothing was sent, and nothing retries it
    assert [a.pk for a in alerts_for_user(user=owner)] == [alert.pk]
    token.refresh_from_db()
    assert token.quota_alerted_percent == 80


def test_turning_low_balance_emails_off_keeps_quota_emails_and_the_other_way_round(owner):
    owner.notify_low_balance = False
    owner.save(update_fields=["notify_low_balance"])
    wallet = _wallet(owner, balance=6_000_000, threshold=5_000_000)
    _spend(wallet, 2_000_000, 1)

    low_balance = wallet_low_balance_alert_raise(wallet_id=wallet.pk)
    [quota] = quota_alerts_raise(key_id=key_with_quota(owner, used=800).pk)

    assert low_balance is not None
    assert [m.subject for m in mail.outbox] == [f"TokenByte alert: {quota.message}"]
    assert Alert.objects.get(pk=low_balance.pk).emailed_at is None

    owner.notify_low_balance, owner.notify_quota_alerts = True, False
    owner.save(update_fields=["notify_low_balance", "notify_quota_alerts"])
    mail.outbox.clear()
    credit_grant(wallet=wallet, amount_micros=10_000_000, reason="top-up")
    _spend(wallet, 10_000_000, 2)
    second_low = wallet_low_balance_alert_raise(wallet_id=wallet.pk)
    set_used(quota.api_token, 1000)
    [full] = quota_alerts_raise(key_id=quota.api_token_id)

    assert (second_low is not None, full.threshold_percent) == (True, 100)
    assert [m.subject for m in mail.outbox] == [
        "TokenByte alert: Your balance is $4.00, below your alert threshold of $5.00."
    ]


# --- a real SMTP server -------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def test_alert_emails_reach_a_real_smtp_server(owner, smtp_server):
    controller, inbox = smtp_server
    token = key_with_quota(owner, used=800)

    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=controller.port,
        EMAIL_USE_TLS=False,
        EMAIL_HOST_USER="",
        EMAIL_HOST_PASSWORD="",
    ):
        [alert] = quota_alerts_raise(key_id=token.pk)

    deadline = time.monotonic() + 5
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    [(sender, recipients, content)] = inbox.messages
    assert sender == "noreply@tokenbyte.local"
    assert recipients == ["owner@example.com"]
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert message["subject"] == f"TokenByte alert: {alert.message}"
    assert message["to"] == "owner@example.com"
    alert.refresh_from_db()
    assert alert.emailed_at is not None
