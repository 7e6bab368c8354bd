"""Organization keys on the relay: the organization's wallet pays, each member's monthly
allowance is held atomically with it (a burst never spends past it), and removing a member or
stopping their keys takes effect within the key cache's second."""

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from accounts.models import ApiToken, Membership
from accounts.scope import Scope
from accounts.services import (
    api_token_create,
    invitation_accept,
    invitation_create,
    member_remove,
    member_role_set,
    member_update,
    organization_create,
    organization_update,
)
from billing.models import Hold, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant, wallet_get_or_create
from tests.factories import UserFactory
from tests.relay.conftest import add_channel, both_paths, wait_for
from tests.relay.test_relay_billing import HOLD_PER_CALL
from usage.models import RequestLog

pytestmark = pytest.mark.django_db(transaction=True)

# The mock's answer to a max_tokens=100 call: 28 prompt and 10 completion tokens.
COST_PER_CALL = 168


@pytest.fixture(params=["sql", "orm"])
def relay(request):
    return both_paths(request)


class Team:
    """An organization with $10 in its wallet, its owner, and a member with a key."""

    def __init__(self, relay, *, allowance: int | None, role: str = "member") -> None:
        self.owner = UserFactory()
        self.org = organization_create(user=self.owner, name="Acme")
        self.wallet = Wallet.objects.get(organization=self.org)
        credit_grant(wallet=self.wallet, amount_micros=10_000_000, reason="test")
        self.owner_scope = Scope(
            user=self.owner, membership=Membership.objects.get(user=self.owner)
        )
        self.user = UserFactory()
        invitation = invitation_create(scope=self.owner_scope, email=self.user.email, role=role)
        self.membership = invitation_accept(invitation=invitation, user=self.user)
        member_update(
            scope=self.owner_scope, membership=self.membership, monthly_allowance_micros=allowance
        )
        self.token, key = api_token_create(owner=self.user, name="work", organization=self.org)
        self.client = relay.client(key)

    def chat(self, **kwargs):
        kwargs.setdefault("max_tokens", 100)
        return self.client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hello there"}], **kwargs
        )

    def used(self) -> int:
        return Membership.objects.get(pk=self.membership.pk).allowance_used_micros


@pytest.fixture
def team(relay, mock, test_model):
    add_channel(mock, "healthy", test_model.model_id)
    return lambda **kwargs: Team(relay, **kwargs)


def refused_code(call) -> str | None:
    try:
        call()
    except openai.APIStatusError as exc:
        return exc.code
    return None


def test_a_member_key_is_paid_from_the_organization_wallet_and_counted_in_the_allowance(team):
    t = team(allowance=None)
    personal = wallet_get_or_create(user=t.user)

    t.chat()

    log = wait_for(lambda: RequestLog.objects.filter(api_token=t.token).first(), message="log")
    assert (log.organization_id, log.user_id, log.cost_micros) == (
        t.org.pk, t.user.pk, COST_PER_CALL
    )  # fmt: skip
    wait_for(lambda: t.used() == COST_PER_CALL, message="allowance settled")
    wallet = Wallet.objects.get(pk=t.wallet.pk)
    assert wallet.balance_micros == 10_000_000 - COST_PER_CALL
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    personal.refresh_from_db()
    assert personal.balance_micros == 0


def test_a_burst_of_calls_never_spends_past_the_member_allowance(team, mock):
    t = team(allowance=HOLD_PER_CALL * 3)
    # Slow answers keep every hold open while the whole burst arrives.
    mock.latency_ms = 1000

    def call(_):
        return refused_code(t.chat) or "ok"

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(call, range(12)))

    assert results.count("ok") == 3
    assert results.count("member_allowance_exceeded") == 9
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    assert t.used() == 3 * COST_PER_CALL
    wallet = Wallet.objects.get(pk=t.wallet.pk)
    assert wallet.held_micros == 0
    assert wallet.balance_micros == 10_000_000 - 3 * COST_PER_CALL
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    refused = RequestLog.objects.filter(api_token=t.token, error_code="member_allowance_exceeded")
    assert refused.count() == 9


def test_a_member_stops_at_their_allowance_with_a_clear_403(team):
    # Room for two calls of 168 micro-USD, not a third (the prompt alone is held up front).
    t = team(allowance=2 * COST_PER_CALL + 50)
    codes = []
    for _ in range(4):
        codes.append(refused_code(lambda: t.chat(max_tokens=openai.NOT_GIVEN)))
        wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="settled")

    assert codes[:2] == [None, None]
    assert codes[-1] == "member_allowance_exceeded"
    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        t.chat()
    assert excinfo.value.status_code == 403
    assert "Monthly allowance exceeded" in excinfo.value.message
    assert t.used() <= 2 * COST_PER_CALL + 50
    # Another member's allowance is theirs: the owner's key still works.
    _, owner_key = api_token_create(owner=t.owner, name="owner", organization=t.org)
    assert refused_code(lambda: t.client.with_options(api_key=owner_key).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Hi"}], max_tokens=100
    )) is None  # fmt: skip


def test_removing_a_member_stops_their_organization_keys_within_a_second(team):
    t = team(allowance=None)
    assert refused_code(t.chat) is None

    member_remove(scope=t.owner_scope, membership=t.membership)
    removed_at = time.monotonic()

    def refused():
        return refused_code(t.chat) is not None

    wait_for(refused, timeout=3, message="the removed member's key refused")
    assert time.monotonic() - removed_at < 1.6
    assert refused_code(t.chat) == "invalid_api_key"
    assert ApiToken.objects.get(pk=t.token.pk).status == ApiToken.Status.REVOKED


def test_lowering_a_role_where_members_have_no_keys_stops_them_within_a_second(team):
    t = team(allowance=None, role="admin")
    organization_update(scope=t.owner_scope, member_keys_enabled=False)
    assert refused_code(t.chat) is None

    member_role_set(scope=t.owner_scope, membership=t.membership, role="member")
    changed_at = time.monotonic()

    wait_for(lambda: refused_code(t.chat) is not None, timeout=3, message="refused")
    assert time.monotonic() - changed_at < 1.6
    assert refused_code(t.chat) == "organization_keys_not_allowed"

    # Allowed again: the key works again within the second (it was never revoked).
    organization_update(scope=t.owner_scope, member_keys_enabled=True)
    wait_for(lambda: refused_code(t.chat) is None, timeout=3, message="allowed again")


def test_stopping_one_members_keys_refuses_them_with_their_own_code(team):
    t = team(allowance=None)
    member_update(scope=t.owner_scope, membership=t.membership, can_create_keys=False)

    wait_for(lambda: refused_code(t.chat) == "organization_keys_not_allowed", timeout=3)
