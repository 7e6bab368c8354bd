"""The playground page and the endpoint that gives its script a short-lived relay key."""

import pytest
from django.test import Client

from accounts.models import ApiToken
from accounts.services import api_key_digest
from catalog.models import Channel, Model
from tests.factories import ChannelFactory, ModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _served(model: Model, status: str = Channel.Status.ENABLED) -> Model:
    ChannelFactory(status=status).served_models.add(model)
    return model


def test_the_page_offers_the_chat_models_the_user_may_call(owner_client):
    anthropic = ProviderFactory(slug="anthropic", name="Anthropic")
    _served(
        ModelFactory(
            model_id="claude-sonnet",
            display_name="Claude Sonnet",
            provider=anthropic,
            context_length=200_000,
            max_output_tokens=8_192,
            input_price_micros_per_mtok=3_000_000,
            output_price_micros_per_mtok=15_000_000,
            capabilities=["vision", "tools"],
        )
    )
    _served(ModelFactory(model_id="gpt-chat"))
    _served(ModelFactory(model_id="text-embed", call_type=Model.CallType.EMBEDDING))
    _served(ModelFactory(model_id="switched-off", enabled=False))
    _served(ModelFactory(model_id="channel-disabled"), status=Channel.Status.DISABLED)
    ModelFactory(model_id="no-channel")

    response = owner_client.get("/playground/")

    assert response.status_code == 200
    assert [m.model_id for m in response.context["models"]] == ["claude-sonnet", "gpt-chat"]
    assert response.context["models_data"][0] == {
        "id": "claude-sonnet",
        "name": "Claude Sonnet",
        "provider": "Anthropic",
        "context_length": 200_000,
        "max_output_tokens": 8_192,
        "input_price": "$3.00",
        "output_price": "$15.00",
        "capabilities": ["vision", "tools"],
    }
    content = response.content.decode()
    assert "2 chat models you can call" in content
    assert 'id="pg-models"' in content
    assert 'data-base-url="http://testserver/v1"' in content
    assert 'data-endpoint="/v1/chat/completions"' in content
    assert "/static/js/playground.js" in content
    assert "/static/css/playground.css" in content
    for hidden in ["text-embed", "switched-off", "channel-disabled", "no-channel"]:
        assert hidden not in content
    # The page itself makes no key: the script asks for one.
    assert not ApiToken.objects.exists()


def test_without_chat_models_the_page_says_so_and_loads_no_script(owner_client):
    response = owner_client.get("/playground/")

    content = response.content.decode()
    assert "No chat models are available yet" in content
    assert "playground.js" not in content


def test_the_navigation_links_the_playground(owner_client):
    content = owner_client.get("/playground/").content.decode()

    assert 'href="/playground/" aria-current="page">Playground</a>' in content


def test_the_key_endpoint_issues_a_short_lived_key_for_the_signed_in_user(owner_client, owner):
    response = owner_client.post("/playground/key/")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert set(data) == {"key", "expires_at", "expires_in"}
    token = ApiToken.objects.get()
    assert token.owner == owner
    assert token.is_playground is True
    assert token.digest == api_key_digest(data["key"])
    assert data["expires_at"] == token.expires_at.isoformat()
    assert data["expires_in"] == 3600


def test_the_key_endpoint_refuses_other_methods(owner_client):
    for method in ("get", "put", "delete"):
        response = getattr(owner_client, method)("/playground/key/")
        assert response.status_code == 405, method

    assert not ApiToken.objects.exists()


def test_the_key_endpoint_needs_the_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    refused = client.post("/playground/key/")

    assert refused.status_code == 403
    assert not ApiToken.objects.exists()
    # With the token the page carries, it works.
    page = client.get("/playground/")
    token = page.cookies["csrftoken"].value
    accepted = client.post("/playground/key/", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200
    assert ApiToken.objects.filter(owner=owner, is_playground=True).count() == 1


@pytest.mark.parametrize("url", ["/playground/", "/playground/key/"])
def test_a_visitor_who_is_not_signed_in_is_sent_to_sign_in(client, url):
    response = client.post(url) if url.endswith("key/") else client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"
    assert not ApiToken.objects.exists()


def test_an_outsider_gets_keys_of_their_own_and_never_touches_the_owners(
    owner_client, owner, outsider
):
    owners = owner_client.post("/playground/key/").json()
    outsider_client = Client()
    outsider_client.force_login(outsider)

    keys = [outsider_client.post("/playground/key/").json()["key"] for _ in range(6)]

    for key in keys:
        assert ApiToken.objects.get(digest=api_key_digest(key)).owner == outsider
    mine = ApiToken.objects.get(digest=api_key_digest(owners["key"]))
    assert mine.owner == owner
    assert mine.status == "enabled"
    # The outsider's page shows nothing of the owner's: no key, no address.
    content = outsider_client.get("/playground/").content.decode()
    assert owners["key"] not in content
    assert owner.email not in content
    assert owners["key"] not in outsider_client.post("/playground/key/").content.decode()
