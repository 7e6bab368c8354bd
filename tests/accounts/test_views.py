from datetime import UTC, datetime

import pytest

from accounts.models import ApiToken
from tests.factories import ApiTokenFactory, TokenGroupFactory

pytestmark = pytest.mark.django_db


def test_the_tokens_page_lists_the_owners_keys_and_not_an_outsiders(owner_client, owner, outsider):
    group = TokenGroupFactory(owner=owner, name="production")
    ApiTokenFactory(
        owner=owner,
        name="production-web",
        prefix="sk-AbCd1234",
        group=group,
        rpm=120,
        tpm=200_000,
        quota_tokens=1_000_000,
        quota_used_tokens=12_345,
        credit_limit_micros=50_000_000,
        credit_used_micros=1_250_000,
        max_cost_per_request_micros=500_000,
        last_used_at=datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
        created_at=datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
    )
    ApiTokenFactory(owner=owner, name="staging-ci", status=ApiToken.Status.DISABLED)
    ApiTokenFactory(owner=outsider, name="outsiders-key", prefix="sk-Outsider")

    response = owner_client.get("/tokens/")

    assert response.status_code == 200
    names = [token.name for token in response.context["tokens"]]
    assert sorted(names) == ["production-web", "staging-ci"]
    content = response.content.decode()
    for text in [
        "sk-AbCd1234…",
        "production",
        "120 RPM · 200,000 TPM",
        "≤ $0.50 per call",
        "12,345 / 1,000,000 tokens",
        "$1.25 / $50.00 credit",
        "2026-11-30 09:15:00",
        "2026-11-01",
        "Disabled",
    ]:
        assert text in content
    assert "outsiders-key" not in content
    assert "sk-Outsider" not in content


def test_the_tokens_page_says_when_there_are_no_keys(owner_client):
    content = owner_client.get("/tokens/").content.decode()

    assert "No API keys yet." in content


def test_the_tokens_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    group = TokenGroupFactory(owner=owner)
    ApiTokenFactory.create_batch(10, owner=owner, group=group)

    with django_assert_max_num_queries(4):
        response = owner_client.get("/tokens/")

    assert response.status_code == 200


def test_the_owner_disables_a_key(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="production-web")

    response = owner_client.post(f"/tokens/{token.pk}/status/", {"status": "disabled"})

    assert response.status_code == 302
    assert response["Location"] == "/tokens/"
    token.refresh_from_db()
    assert token.status == ApiToken.Status.DISABLED


def test_htmx_gets_the_keys_new_row_back(owner_client, owner):
    token = ApiTokenFactory(owner=owner, status=ApiToken.Status.DISABLED)

    response = owner_client.post(
        f"/tokens/{token.pk}/status/", {"status": "enabled"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    content = response.content.decode()
    assert content.startswith(f'<tr id="token-{token.pk}">')
    assert ">Enabled</span>" in content
    assert ">Disable</button>" in content
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_an_outsiders_key_cannot_be_disabled(owner_client, outsider):
    token = ApiTokenFactory(owner=outsider)

    response = owner_client.post(f"/tokens/{token.pk}/status/", {"status": "disabled"})

    assert response.status_code == 404
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_a_revoked_key_cannot_be_enabled_from_the_list(owner_client, owner):
    token = ApiTokenFactory(owner=owner, status=ApiToken.Status.REVOKED)

    response = owner_client.post(f"/tokens/{token.pk}/status/", {"status": "enabled"})

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == ApiToken.Status.REVOKED


def test_the_status_form_refuses_revoking(owner_client, owner):
    token = ApiTokenFactory(owner=owner)

    response = owner_client.post(f"/tokens/{token.pk}/status/", {"status": "revoked"})

    assert response.status_code == 400
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_changing_a_keys_status_needs_a_post(owner_client, owner):
    token = ApiTokenFactory(owner=owner)

    assert owner_client.get(f"/tokens/{token.pk}/status/").status_code == 405


def test_changing_a_keys_status_needs_a_login(client):
    token = ApiTokenFactory()

    response = client.post(f"/tokens/{token.pk}/status/", {"status": "disabled"})

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_the_groups_page_lists_the_owners_groups_with_their_key_counts(
    owner_client, owner, outsider
):
    group = TokenGroupFactory(
        owner=owner, name="production", description="Keys of the web app", rpd=10_000
    )
    ApiTokenFactory.create_batch(3, owner=owner, group=group)
    TokenGroupFactory(owner=outsider, name="outsiders-group")

    response = owner_client.get("/tokens/groups/")

    assert response.status_code == 200
    assert [(g.name, g.key_count) for g in response.context["groups"]] == [("production", 3)]
    content = response.content.decode()
    assert "Keys of the web app" in content
    assert "10,000 RPD" in content
    assert "outsiders-group" not in content


def test_the_groups_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    TokenGroupFactory.create_batch(5, owner=owner)

    with django_assert_max_num_queries(4):
        response = owner_client.get("/tokens/groups/")

    assert response.status_code == 200
