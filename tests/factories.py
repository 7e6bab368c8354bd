import functools
from datetime import timedelta

import factory
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import (
    ApiToken,
    Invitation,
    Membership,
    Organization,
    PersonalAccessToken,
    TokenGroup,
    User,
)
from accounts.services import ACCESS_TOKEN_DISPLAY_LENGTH, ACCESS_TOKEN_PREFIX, api_key_digest
from billing.models import Alert, Hold, TopUp, TopUpRefund, Wallet
from catalog.models import Channel, Model, Provider
from tasks.models import AsyncTask
from usage.models import RequestLog, UsageRollup


@functools.cache
def _password_hash() -> str:
    # Hashed once per run: PBKDF2 takes a good part of a second per user, and tests make many.
    return make_password(TEST_PASSWORD)


TEST_PASSWORD = "correct horse battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.LazyFunction(_password_hash)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class TokenGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TokenGroup

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"group-{n}")


class ApiTokenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ApiToken

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"key-{n}")
    prefix = factory.Sequence(lambda n: f"sk-{n:08d}")
    digest = factory.Sequence(lambda n: api_key_digest(f"sk-test-{n}"))
    created_at = factory.LazyFunction(timezone.now)


class PersonalAccessTokenFactory(factory.django.DjangoModelFactory):
    """A personal access token for /api/; its plaintext (tbp_…) is on `.secret`."""

    class Meta:
        model = PersonalAccessToken

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"script-{n}")
    secret = factory.Sequence(lambda n: f"{ACCESS_TOKEN_PREFIX}test-secret-{n:08d}")
    prefix = factory.LazyAttribute(lambda o: o.secret[:ACCESS_TOKEN_DISPLAY_LENGTH])
    digest = factory.LazyAttribute(lambda o: api_key_digest(o.secret))

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # Only the digest is a column; the plaintext rides on the instance for the test's header.
        secret = kwargs.pop("secret")
        token = super()._create(model_class, *args, **kwargs)
        token.secret = secret
        return token


class WalletFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Wallet

    user = factory.SubFactory(UserFactory)


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("slug",)

    slug = "openai"
    name = "OpenAI"


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Model

    model_id = factory.Sequence(lambda n: f"model-{n}")
    display_name = factory.LazyAttribute(lambda o: o.model_id)
    provider = factory.SubFactory(ProviderFactory)
    input_price_micros_per_mtok = 2_500_000
    output_price_micros_per_mtok = 10_000_000


class ChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Channel

    name = factory.Sequence(lambda n: f"channel-{n}")
    type = Channel.Type.OPENAI
    base_url = "http://127.0.0.1:9/v1"
    api_key = "upstream-secret"


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    created_by = factory.SubFactory(UserFactory)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)


class InvitationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Invitation

    organization = factory.SubFactory(OrganizationFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    token_digest = factory.Sequence(lambda n: api_key_digest(f"invitation-{n}"))
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=7))


class HoldFactory(factory.django.DjangoModelFactory):
    """A hold row only: the wallet's held_micros is not moved (use the services for that)."""

    class Meta:
        model = Hold

    request_id = factory.Sequence(lambda n: f"req-hold-{n}")
    wallet = factory.SubFactory(WalletFactory)
    amount_micros = 1_000
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=10))


class TopUpFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TopUp

    wallet = factory.SubFactory(WalletFactory)
    user = factory.SelfAttribute("wallet.user")
    amount_micros = 10_000_000


class PaidTopUpFactory(TopUpFactory):
    """A top-up as the webhook's credit step leaves it: paid, with a receipt number and the
    Stripe ids (the wallet's ledger and balance are not moved: post the credit with
    billing.services.ledger_post when the test needs it)."""

    status = TopUp.Status.PAID
    stripe_checkout_session_id = factory.Sequence(lambda n: f"cs_test_paid_{n:06d}")
    stripe_payment_intent_id = factory.Sequence(lambda n: f"pi_test_paid_{n:06d}")
    receipt_number = factory.Sequence(lambda n: f"TB-202612-{n + 1:06d}")
    paid_at = factory.LazyFunction(timezone.now)


class TopUpRefundFactory(factory.django.DjangoModelFactory):
    """A refund row only: the top-up's refunded_micros and the ledger are not moved."""

    class Meta:
        model = TopUpRefund

    topup = factory.SubFactory(PaidTopUpFactory)
    stripe_refund_id = factory.Sequence(lambda n: f"re_test_{n:06d}")
    amount_micros = 5_000_000
    debited_micros = factory.SelfAttribute("amount_micros")
    debt_micros = 0


class AlertFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Alert

    kind = Alert.Kind.LOW_BALANCE
    user = factory.SubFactory(UserFactory)
    dedupe_key = factory.Sequence(lambda n: f"alert-{n}")
    message = "Your balance is below $5.00"


class RequestLogFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RequestLog

    request_id = factory.Sequence(lambda n: f"req-log-{n}")
    user = factory.SubFactory(UserFactory)
    model_id = "gpt-4o-mini"
    call_type = "chat"
    status_code = 200
    prompt_tokens = 12
    completion_tokens = 30
    cost_micros = 1_234


class UsageRollupFactory(factory.django.DjangoModelFactory):
    """One hour's sums of a user's calls (billing's settlement writes these beside each log)."""

    class Meta:
        model = UsageRollup

    hour = factory.LazyFunction(lambda: timezone.now().replace(minute=0, second=0, microsecond=0))
    user = factory.SubFactory(UserFactory)
    model_id = "gpt-4o-mini"
    call_type = "chat"
    requests = 1
    prompt_tokens = 12
    completion_tokens = 30
    cost_micros = 1_234
    duration_ms = 800


class AsyncTaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AsyncTask

    public_id = factory.Sequence(lambda n: f"task_{n:08d}")
    user = factory.SubFactory(UserFactory)
    kind = AsyncTask.Kind.IMAGE_GENERATION
    model_id = "dall-e-3"
    input = factory.LazyFunction(lambda: {"prompt": "a lighthouse"})


class TOTPDeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TOTPDevice

    user = factory.SubFactory(UserFactory, is_staff=True)
    name = "authenticator"
    confirmed = True


def totp_token(device: TOTPDevice, *, steps_from_now: int = 0) -> str:
    """The code an authenticator app shows for the device now (or some steps away)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time += steps_from_now * device.step
    return f"{totp.token():0{device.digits}d}"
