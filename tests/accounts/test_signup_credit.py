"""A new account starts with SIGNUP_CREDIT_USD: one ledger grant, once, whatever the path."""

import pytest
from allauth.socialaccount.models import SocialAccount, SocialLogin
from django.test import RequestFactory, override_settings

from accounts.adapters import SocialAccountAdapter
from accounts.models import User
from billing.models import LedgerEntry, Wallet
from billing.services import signup_credit_grant
from tests.accounts.test_sign_in import sign_up
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@override_settings(SIGNUP_CREDIT_USD="1.50")
def test_signing_up_grants_the_welcome_credit_once_in_the_ledger(client):
    sign_up(client)

    user = User.objects.get()
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance_micros == 1_500_000
    entry = LedgerEntry.objects.get(wallet=wallet)
    assert (entry.kind, entry.amount_micros, entry.idempotency_key, entry.description) == (
        "grant", 1_500_000, f"signup:{user.pk}", "Welcome credit",
    )  # fmt: skip


@override_settings(SIGNUP_CREDIT_USD="1.50")
def test_granting_it_again_for_the_same_user_changes_nothing():
    user = UserFactory()
    first = signup_credit_grant(user=user)

    second = signup_credit_grant(user=user)

    assert second.pk == first.pk
    assert Wallet.objects.get(user=user).balance_micros == 1_500_000
    assert LedgerEntry.objects.count() == 1


@override_settings(SIGNUP_CREDIT_USD="0")
def test_no_credit_is_granted_when_the_setting_is_zero(client):
    sign_up(client)

    assert not LedgerEntry.objects.exists()


@override_settings(SIGNUP_CREDIT_USD="2")
def test_a_sign_up_through_a_social_provider_gets_the_credit_too():
    user = User(email="social@example.com")
    login = SocialLogin(user=user, account=SocialAccount(provider="openid_connect", uid="42"))
    request = RequestFactory().get("/")
    request.session = {}

    SocialAccountAdapter(request).save_user(request, login)

    assert Wallet.objects.get(user__email="social@example.com").balance_micros == 2_000_000
