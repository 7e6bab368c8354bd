import factory
from django.utils import timezone

from accounts.models import ApiToken, TokenGroup, User
from accounts.services import api_key_digest
from billing.models import Wallet
from catalog.models import Channel, Model, Provider


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")

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
