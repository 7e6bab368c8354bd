import pytest

from catalog.models import Channel, Model
from tests.factories import ChannelFactory, ModelFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def user_client(client):
    client.force_login(UserFactory())
    return client


def _served(model: Model, status: str = Channel.Status.ENABLED) -> Model:
    ChannelFactory(status=status).served_models.add(model)
    return model


def test_the_models_page_lists_enabled_models_that_a_channel_serves(user_client):
    anthropic = ProviderFactory(slug="anthropic", name="Anthropic")
    _served(
        ModelFactory(
            model_id="claude-sonnet",
            provider=anthropic,
            context_length=200_000,
            input_price_micros_per_mtok=3_000_000,
            output_price_micros_per_mtok=15_000_000,
            cached_input_price_micros_per_mtok=300_000,
            capabilities=["vision", "tools"],
        )
    )
    _served(ModelFactory(model_id="switched-off", enabled=False))
    ModelFactory(model_id="no-channel")
    _served(ModelFactory(model_id="channel-disabled"), status=Channel.Status.DISABLED)

    response = user_client.get("/models/")

    assert response.status_code == 200
    assert [m.model_id for m in response.context["models"]] == ["claude-sonnet"]
    content = response.content.decode()
    for text in ["Anthropic", "200,000", "$3.00", "$15.00", "$0.30", "vision", "tools"]:
        assert text in content
    for hidden in ["switched-off", "no-channel", "channel-disabled"]:
        assert hidden not in content


def test_a_model_served_by_two_channels_is_listed_once(user_client):
    model = _served(ModelFactory(model_id="gpt-4o"))
    _served(model)

    response = user_client.get("/models/")

    assert [m.model_id for m in response.context["models"]] == ["gpt-4o"]


def test_a_per_image_model_shows_its_unit_price(user_client):
    _served(
        ModelFactory(
            model_id="dall-e-3",
            call_type=Model.CallType.IMAGE,
            price_unit=Model.PriceUnit.IMAGE,
            unit_price_micros=40_000,
        )
    )

    content = user_client.get("/models/").content.decode()

    assert "$0.04 per image" in content


def test_the_models_page_makes_a_bounded_number_of_queries(
    user_client, django_assert_max_num_queries
):
    for _ in range(10):
        _served(ModelFactory())

    with django_assert_max_num_queries(4):
        response = user_client.get("/models/")

    assert response.status_code == 200


@pytest.fixture
def catalog():
    anthropic = ProviderFactory(slug="anthropic", name="Anthropic")
    return [
        _served(ModelFactory(model_id="claude-sonnet", provider=anthropic,
                             capabilities=["vision", "tools"], sort_order=1)),
        _served(ModelFactory(model_id="gpt-4o-mini", display_name="GPT-4o mini",
                             capabilities=["tools"], sort_order=2)),
        _served(ModelFactory(model_id="text-embedding-3-small", call_type=Model.CallType.EMBEDDING,
                             sort_order=3)),
    ]  # fmt: skip


def ids(response) -> list[str]:
    return [m.model_id for m in response.context["models"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "4O MINI"}, ["gpt-4o-mini"]),
        ({"q": "anthropic"}, ["claude-sonnet"]),
        ({"provider": "openai"}, ["gpt-4o-mini", "text-embedding-3-small"]),
        ({"capability": "tools"}, ["claude-sonnet", "gpt-4o-mini"]),
        ({"call_type": "embedding"}, ["text-embedding-3-small"]),
        ({"capability": "vision", "provider": "openai"}, []),
    ],
)
def test_the_models_page_searches_and_filters_on_the_server(user_client, catalog, query, expected):
    response = user_client.get("/models/", query)

    assert ids(response) == expected
    content = response.content.decode()
    assert f"{len(expected)} of 3 models" in content


def test_the_filters_offer_only_what_the_callable_models_have(user_client, catalog):
    content = user_client.get("/models/", {"provider": "anthropic"}).content.decode()

    assert '<option value="anthropic" selected>Anthropic</option>' in content
    assert '<option value="openai">OpenAI</option>' in content
    assert '<option value="tools">tools</option>' in content
    assert '<option value="vision">vision</option>' in content
    assert '<option value="embedding">Embeddings</option>' in content
    assert '<option value="image">' not in content


def test_a_search_without_matches_says_so(user_client, catalog):
    content = user_client.get("/models/", {"q": "nothing-like-this"}).content.decode()

    assert "No model matches this search." in content
    assert 'href="/models/">Clear</a>' in content


def test_each_model_id_has_a_copy_button(user_client, catalog):
    content = user_client.get("/models/").content.decode()

    assert (
        '<button type="button" class="copy-button" data-copy="gpt-4o-mini" '
        'aria-label="Copy the model id gpt-4o-mini" hidden>Copy</button>'
    ) in content
    assert "js/logs.js" in content
