"""/api/models/: the models a user may call, with prices, filters and one model by id."""

import pytest

from accounts.services import access_token_create
from catalog.models import Channel, Model
from tests.factories import ChannelFactory, ModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def served(model: Model, status: str = Channel.Status.ENABLED) -> Model:
    ChannelFactory(status=status).served_models.add(model)
    return model


@pytest.fixture
def catalog():
    anthropic = ProviderFactory(slug="anthropic", name="Anthropic")
    openai = ProviderFactory(slug="openai", name="OpenAI")
    return {
        "claude": served(
            ModelFactory(
                model_id="claude-sonnet",
                display_name="Claude Sonnet",
                provider=anthropic,
                context_length=200_000,
                max_output_tokens=8_192,
                input_price_micros_per_mtok=3_000_000,
                output_price_micros_per_mtok=15_000_000,
                cached_input_price_micros_per_mtok=300_000,
                cache_write_price_micros_per_mtok=3_750_000,
                capabilities=["vision", "tools"],
                sort_order=1,
            )
        ),
        "embed": served(
            ModelFactory(
                model_id="text-embedding-3-small",
                provider=openai,
                call_type=Model.CallType.EMBEDDING,
                input_price_micros_per_mtok=20_000,
                output_price_micros_per_mtok=0,
                sort_order=2,
            )
        ),
        "image": served(
            ModelFactory(
                model_id="dall-e-3",
                provider=openai,
                call_type=Model.CallType.IMAGE,
                price_unit=Model.PriceUnit.IMAGE,
                unit_price_micros=40_000,
                input_price_micros_per_mtok=0,
                output_price_micros_per_mtok=0,
                sort_order=3,
            )
        ),
        "off": served(ModelFactory(model_id="switched-off", enabled=False)),
        "unrouted": ModelFactory(model_id="no-channel"),
        "down": served(ModelFactory(model_id="channel-off"), status=Channel.Status.DISABLED),
    }


def ids(response) -> list[str]:
    return [model["id"] for model in response.json()]


def test_the_list_has_only_callable_models_with_their_prices(client, owner, catalog):
    _, secret = access_token_create(user=owner, name="script")

    response = client.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code == 200
    assert ids(response) == ["claude-sonnet", "text-embedding-3-small", "dall-e-3"]
    assert response.json()[0] == {
        "id": "claude-sonnet",
        "name": "Claude Sonnet",
        "provider": {"slug": "anthropic", "name": "Anthropic"},
        "description": "",
        "call_type": "chat",
        "context_length": 200_000,
        "max_output_tokens": 8_192,
        "capabilities": ["vision", "tools"],
        "price_unit": "mtok",
        "input_price_micros_per_mtok": 3_000_000,
        "output_price_micros_per_mtok": 15_000_000,
        "cached_input_price_micros_per_mtok": 300_000,
        "cache_write_price_micros_per_mtok": 3_750_000,
        "unit_price_micros": 0,
        "input_price_usd_per_mtok": "3.000000",
        "output_price_usd_per_mtok": "15.000000",
        "cached_input_price_usd_per_mtok": "0.300000",
        "cache_write_price_usd_per_mtok": "3.750000",
        "unit_price_usd": "0.000000",
    }
    image = response.json()[2]
    assert (image["price_unit"], image["unit_price_micros"], image["unit_price_usd"]) == (
        "image",
        40_000,
        "0.040000",
    )


def test_a_model_without_its_own_cached_price_reports_the_input_price(owner_client, catalog):
    embed = owner_client.get("/api/models/text-embedding-3-small/").json()

    assert embed["cached_input_price_micros_per_mtok"] == 20_000
    assert embed["cache_write_price_micros_per_mtok"] == 20_000


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "SONNET"}, ["claude-sonnet"]),
        ({"q": "openai"}, ["text-embedding-3-small", "dall-e-3"]),
        ({"provider": "openai"}, ["text-embedding-3-small", "dall-e-3"]),
        ({"capability": "vision"}, ["claude-sonnet"]),
        ({"call_type": "image"}, ["dall-e-3"]),
        ({"provider": "anthropic", "call_type": "image"}, []),
    ],
)
def test_the_list_takes_search_and_filters(owner_client, catalog, query, expected):
    assert ids(owner_client.get("/api/models/", query)) == expected


def test_one_model_by_id(owner_client, catalog):
    response = owner_client.get("/api/models/claude-sonnet/")

    assert response.status_code == 200
    assert response.json()["id"] == "claude-sonnet"


def test_a_model_id_with_a_slash_is_found(owner_client):
    served(ModelFactory(model_id="meta-llama/llama-3.1-8b"))

    response = owner_client.get("/api/models/meta-llama/llama-3.1-8b/")

    assert response.status_code == 200
    assert response.json()["id"] == "meta-llama/llama-3.1-8b"


@pytest.mark.parametrize("model_id", ["switched-off", "no-channel", "channel-off", "nope"])
def test_a_model_that_cannot_be_called_is_a_404(owner_client, catalog, model_id):
    response = owner_client.get(f"/api/models/{model_id}/")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_the_models_api_needs_authentication(client, catalog):
    assert client.get("/api/models/").status_code in (401, 403)
    assert client.get("/api/models/claude-sonnet/").status_code in (401, 403)


def test_the_list_makes_one_query_for_the_models(owner_client, catalog, django_assert_num_queries):
    # Session, user, the models with their providers.
    with django_assert_num_queries(3):
        owner_client.get("/api/models/")
