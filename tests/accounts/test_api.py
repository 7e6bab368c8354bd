"""/api/ keys and groups: every endpoint, as the owner and as an outsider, by personal access token
and by session."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, PersonalAccessToken, QuotaReset, TokenGroup
from accounts.services import access_token_create, api_key_digest
from tests.factories import (
    ApiTokenFactory,
    ModelFactory,
    RequestLogFactory,
    TokenGroupFactory,
    UsageRollupFactory,
)
from usage.models import RequestLog

pytestmark = pytest.mark.django_db


class Api:
    """The Django test client speaking JSON with a bearer token."""

    def __init__(self, client, secret: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def get(self, path: str, **params):
        return self.client.get(path, params, headers=self.headers)

    def post(self, path: str, data=None):
        return self.client.post(
            path, data or {}, content_type="application/json", headers=self.headers
        )

    def patch(self, path: str, data):
        return self.client.patch(path, data, content_type="application/json", headers=self.headers)

    def delete(self, path: str):
        return self.client.delete(path, headers=self.headers)


@pytest.fixture
def api(client, owner):
    _, secret = access_token_create(user=owner, name="script")
    return Api(client, secret)


@pytest.fixture
def outsider_api(client, outsider):
    _, secret = access_token_create(user=outsider, name="outsider-script")
    return Api(client, secret)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "fields"}
    if code is not None:
        assert error["code"] == code
    return error


# --- authentication ------------------------------------------------------------------------------


def test_an_anonymous_request_is_a_401_in_the_error_shape(client):
    error = assert_error(Api(client, None).get("/api/keys/"), 401)

    assert error["type"] == "authentication_error"


def test_a_revoked_access_token_is_a_401(client, owner):
    token, secret = access_token_create(user=owner, name="old")
    PersonalAccessToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())

    error = assert_error(Api(client, secret).get("/api/keys/"), 401)

    assert error["message"] == "The access token is unknown, revoked or expired."


def test_an_expired_access_token_is_a_401(client, owner):
    token, secret = access_token_create(
        user=owner, name="short", expires_at=timezone.now() + timedelta(hours=1)
    )
    PersonalAccessToken.objects.filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert_error(Api(client, secret).get("/api/groups/"), 401)


def test_a_relay_key_is_not_an_access_token(client, owner):
    error = assert_error(Api(client, "sk-not-for-the-api").get("/api/keys/"), 401)

    assert "not a personal access token" in error["message"]


def test_a_signed_in_session_reads_the_keys_too(owner_client, owner):
    ApiTokenFactory(owner=owner, name="from-session")

    response = owner_client.get("/api/keys/")

    assert response.status_code == 200
    assert [k["name"] for k in response.json()["results"]] == ["from-session"]


# --- keys ----------------------------------------------------------------------------------------


def test_the_key_list_shows_the_owners_keys_with_this_months_usage_and_never_a_secret(
    api, owner, outsider
):
    group = TokenGroupFactory(owner=owner, name="production")
    token = ApiTokenFactory(
        owner=owner,
        name="production-web",
        prefix="sk-AbCd1234",
        group=group,
        rpm=60,
        credit_limit_micros=5_000_000,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    ApiTokenFactory(owner=owner, name="playground", is_playground=True)
    ApiTokenFactory(owner=outsider, name="outsiders-key")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRollupFactory(user=owner, hour=hour, key_id=token.pk, group_id=group.pk, requests=3,
                       prompt_tokens=100, completion_tokens=50, cost_micros=1_500)  # fmt: skip
    UsageRollupFactory(user=owner, hour=hour, key_id=token.pk, model_id="other", requests=2,
                       prompt_tokens=10, completion_tokens=5, cost_micros=500)  # fmt: skip
    # Last month's calls are not this month's.
    UsageRollupFactory(user=owner, hour=hour - timedelta(days=40), key_id=token.pk, requests=9)

    response = api.get("/api/keys/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    key = body["results"][0]
    assert key["id"] == token.pk
    assert key["name"] == "production-web"
    assert key["prefix"] == "sk-AbCd1234"
    assert key["status"] == "enabled"
    assert key["group"] == group.pk
    assert key["group_name"] == "production"
    assert key["rpm"] == 60
    assert key["credit_limit_micros"] == 5_000_000
    assert key["month"] == {"requests": 5, "tokens": 165, "cost_micros": 2_000}
    assert "digest" not in key and "key" not in key


def test_the_key_list_filters_by_status_group_and_text(api, owner):
    group = TokenGroupFactory(owner=owner)
    ApiTokenFactory(owner=owner, name="web-prod", group=group)
    ApiTokenFactory(owner=owner, name="web-staging", status=ApiToken.Status.DISABLED)
    ApiTokenFactory(owner=owner, name="ci", prefix="sk-CiCiCiCi")

    def names(**params):
        return sorted(k["name"] for k in api.get("/api/keys/", **params).json()["results"])

    assert names(status="disabled") == ["web-staging"]
    assert names(group=group.pk) == ["web-prod"]
    assert names(group=0) == ["ci", "web-staging"]
    assert names(q="web") == ["web-prod", "web-staging"]
    assert names(q="sk-CiCi") == ["ci"]
    assert_error(api.get("/api/keys/", status="lost"), 400)


def test_a_key_is_created_with_every_option_and_its_secret_is_in_that_answer_only(api, owner):
    ModelFactory(model_id="gpt-test")
    group = TokenGroupFactory(owner=owner, name="team")
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)

    response = api.post(
        "/api/keys/",
        {
            "name": "  production-web ",
            "group": group.pk,
            "allowed_models": ["gpt-test"],
            "allowed_ips": ["203.0.113.7", "10.0.0.0/8"],
            "rpm": 60,
            "tpm": 100_000,
            "rpd": 5_000,
            "quota_tokens": 1_000_000,
            "quota_reset": "monthly",
            "max_cost_per_request_micros": 250_000,
            "credit_limit_micros": 20_000_000,
            "expires_at": expires.isoformat(),
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("sk-")
    token = ApiToken.objects.get(pk=body["id"])
    assert token.digest == api_key_digest(body["key"])
    assert token.owner == owner
    assert token.name == "production-web"
    assert token.group == group
    assert token.allowed_models == ["gpt-test"]
    assert token.allowed_ips == ["203.0.113.7/32", "10.0.0.0/8"]
    assert (token.rpm, token.tpm, token.rpd) == (60, 100_000, 5_000)
    assert (token.quota_tokens, token.quota_reset) == (1_000_000, QuotaReset.MONTHLY)
    assert token.quota_next_reset_at is not None
    assert token.max_cost_per_request_micros == 250_000
    assert token.credit_limit_micros == 20_000_000
    assert token.expires_at == expires
    assert "key" not in api.get(f"/api/keys/{token.pk}/").json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"name": "x", "allowed_ips": ["not-an-ip"]}, "allowed_ips"),
        ({"name": "x", "rpm": -1}, "rpm"),
        ({"name": "x", "credit_limit_micros": -5}, "credit_limit_micros"),
        ({"name": "x", "quota_reset": "hourly"}, "quota_reset"),
        ({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "   "}, "name"),
        ({}, "name"),
    ],
)
def test_creating_a_key_with_a_bad_option_is_a_400_on_that_field(api, body, field):
    error = assert_error(api.post("/api/keys/", body), 400)

    assert field in error["fields"]
    assert ApiToken.objects.count() == 0


def test_a_key_cannot_be_created_in_an_outsiders_group(api, outsider):
    group = TokenGroupFactory(owner=outsider)

    error = assert_error(api.post("/api/keys/", {"name": "x", "group": group.pk}), 400)

    assert error["fields"] == {"group": [f"no group with id {group.pk}"]}
    assert ApiToken.objects.count() == 0


def test_the_owner_reads_one_key_and_an_outsider_gets_a_404(api, outsider_api, owner):
    token = ApiTokenFactory(owner=owner, name="mine")

    assert api.get(f"/api/keys/{token.pk}/").json()["name"] == "mine"
    error = assert_error(outsider_api.get(f"/api/keys/{token.pk}/"), 404)
    assert error["type"] == "not_found"


def test_a_playground_key_is_not_found_through_the_api(api, owner):
    token = ApiTokenFactory(owner=owner, is_playground=True)

    assert_error(api.get(f"/api/keys/{token.pk}/"), 404)


def test_patch_changes_only_the_fields_sent_and_null_lifts_a_limit(api, owner):
    token = ApiTokenFactory(
        owner=owner, name="web", rpm=60, tpm=1_000, credit_limit_micros=5_000_000,
        quota_used_tokens=123, credit_used_micros=456,
    )  # fmt: skip
    group = TokenGroupFactory(owner=owner)

    response = api.patch(
        f"/api/keys/{token.pk}/",
        {"name": "web-2", "rpm": None, "group": group.pk, "quota_reset": "daily"},
    )

    assert response.status_code == 200, response.content
    token.refresh_from_db()
    assert token.name == "web-2"
    assert token.rpm is None
    assert token.tpm == 1_000
    assert token.credit_limit_micros == 5_000_000
    assert token.group == group
    assert token.quota_reset == QuotaReset.DAILY
    assert token.quota_next_reset_at is not None
    # The relay's counters are never written from an edit.
    assert (token.quota_used_tokens, token.credit_used_micros) == (123, 456)
    assert response.json()["group_name"] == group.name


def test_patch_with_a_bad_value_changes_nothing(api, owner):
    token = ApiTokenFactory(owner=owner, name="web", rpm=60)

    error = assert_error(
        api.patch(f"/api/keys/{token.pk}/", {"name": "web-2", "allowed_ips": ["999.1.1.1"]}), 400
    )

    assert "allowed_ips" in error["fields"]
    token.refresh_from_db()
    assert (token.name, token.rpm, token.allowed_ips) == ("web", 60, [])


def test_a_revoked_key_cannot_be_edited(api, owner):
    token = ApiTokenFactory(owner=owner, name="old", status=ApiToken.Status.REVOKED)

    assert_error(api.patch(f"/api/keys/{token.pk}/", {"name": "new"}), 409, "revoked")
    token.refresh_from_db()
    assert token.name == "old"


def test_an_outsider_cannot_patch_or_delete_the_owners_key(outsider_api, owner):
    token = ApiTokenFactory(owner=owner, name="mine", rpm=60)

    assert_error(outsider_api.patch(f"/api/keys/{token.pk}/", {"rpm": 1}), 404)
    assert_error(outsider_api.delete(f"/api/keys/{token.pk}/"), 404)
    token.refresh_from_db()
    assert token.rpm == 60


def test_deleting_a_key_keeps_its_logs_under_its_name(api, owner):
    token = ApiTokenFactory(owner=owner, name="old-key")
    log = RequestLogFactory(user=owner, api_token=token, token_name="old-key")

    response = api.delete(f"/api/keys/{token.pk}/")

    assert response.status_code == 204
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    log = RequestLog.objects.get(pk=log.pk)
    assert (log.api_token_id, log.token_name) == (None, "old-key")
    assert AuditEvent.objects.filter(user=owner, kind="key_revoked").count() == 1


def test_a_key_is_disabled_enabled_and_revoked_for_good(api, owner):
    token = ApiTokenFactory(owner=owner)

    assert api.post(f"/api/keys/{token.pk}/disable/").json()["status"] == "disabled"
    assert api.post(f"/api/keys/{token.pk}/enable/").json()["status"] == "enabled"
    revoked = api.post(f"/api/keys/{token.pk}/revoke/").json()
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    assert_error(api.post(f"/api/keys/{token.pk}/enable/"), 409, "revoked")
    token.refresh_from_db()
    assert token.status == ApiToken.Status.REVOKED


@pytest.mark.parametrize("action", ["enable", "disable", "revoke"])
def test_an_outsider_cannot_change_a_keys_status(outsider_api, owner, action):
    token = ApiTokenFactory(owner=owner, status=ApiToken.Status.DISABLED)

    assert_error(outsider_api.post(f"/api/keys/{token.pk}/{action}/"), 404)
    token.refresh_from_db()
    assert token.status == ApiToken.Status.DISABLED


def test_batch_revoke_revokes_the_owners_keys_and_reports_the_rest(api, owner, outsider):
    first, second = ApiTokenFactory.create_batch(2, owner=owner)
    already = ApiTokenFactory(owner=owner, status=ApiToken.Status.REVOKED)
    theirs = ApiTokenFactory(owner=outsider)

    response = api.post(
        "/api/keys/batch/revoke/", {"ids": [first.pk, theirs.pk, second.pk, already.pk, 999_999]}
    )

    assert response.status_code == 200
    assert response.json() == {
        "changed": [first.pk, second.pk],
        "unchanged": [already.pk],
        "not_found": [theirs.pk, 999_999],
    }
    assert set(ApiToken.objects.filter(owner=owner).values_list("status", flat=True)) == {"revoked"}
    theirs.refresh_from_db()
    assert theirs.status == ApiToken.Status.ENABLED
    assert AuditEvent.objects.filter(user=owner, kind="key_revoked").count() == 2


def test_a_batch_names_at_most_1000_ids(api, owner):
    token = ApiTokenFactory(owner=owner)

    error = assert_error(api.post("/api/keys/batch/revoke/", {"ids": list(range(1, 1002))}), 400)

    assert "ids" in error["fields"]
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_batch_read_answers_the_owners_keys_in_the_order_asked(api, owner, outsider):
    first, second = ApiTokenFactory.create_batch(2, owner=owner)
    theirs = ApiTokenFactory(owner=outsider)

    response = api.post("/api/keys/batch/read/", {"ids": [second.pk, theirs.pk, first.pk]})

    assert response.status_code == 200
    body = response.json()
    assert [k["id"] for k in body["keys"]] == [second.pk, first.pk]
    assert body["not_found"] == [theirs.pk]


def test_the_csv_export_holds_metadata_and_never_a_secret(api, owner, outsider):
    group = TokenGroupFactory(owner=owner, name="team")
    token = ApiTokenFactory(
        owner=owner, name="web", prefix="sk-WebWebWe", group=group, rpm=60,
        credit_limit_micros=2_500_000, allowed_models=["a", "b"],
        created_at=datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
    )  # fmt: skip
    other = ApiTokenFactory(owner=owner, name="other")
    ApiTokenFactory(owner=outsider, name="outsiders")
    UsageRollupFactory(user=owner, key_id=token.pk, requests=4, cost_micros=12_345,
                       prompt_tokens=10, completion_tokens=20)  # fmt: skip

    response = api.get("/api/keys/export.csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in rows] == ["other", "web"]
    web = rows[1]
    assert web["id"] == str(token.pk)
    assert web["prefix"] == "sk-WebWebWe"
    assert web["group"] == "team"
    assert web["created_at"] == "2026-11-02T08:30:00+00:00"
    assert web["rpm"] == "60"
    assert web["tpm"] == ""
    assert web["credit_limit_usd"] == "2.500000"
    assert web["allowed_models"] == "a b"
    assert (web["month_requests"], web["month_tokens"], web["month_cost_usd"]) == (
        "4", "30", "0.012345",
    )  # fmt: skip
    assert "digest" not in text and token.digest not in text and other.digest not in text

    only = api.get("/api/keys/export.csv", ids=f"{other.pk}")
    text = b"".join(only.streaming_content).decode()
    assert [r["name"] for r in csv.DictReader(io.StringIO(text))] == ["other"]
    assert_error(api.get("/api/keys/export.csv", ids="1,x"), 400)


def test_the_csv_export_leaves_out_an_outsiders_ids(outsider_api, owner):
    token = ApiTokenFactory(owner=owner, name="secret-project")

    response = outsider_api.get("/api/keys/export.csv", ids=str(token.pk))

    text = b"".join(response.streaming_content).decode()
    assert "secret-project" not in text
    assert text.count("\n") == 1


# --- groups --------------------------------------------------------------------------------------


def test_the_group_list_shows_the_owners_groups_with_key_counts_and_usage(api, owner, outsider):
    group = TokenGroupFactory(owner=owner, name="team", description="The web team", rpm=100)
    ApiTokenFactory.create_batch(2, owner=owner, group=group)
    TokenGroupFactory(owner=outsider, name="theirs")
    UsageRollupFactory(user=owner, group_id=group.pk, key_id=1, requests=7, cost_micros=700,
                       prompt_tokens=1, completion_tokens=2)  # fmt: skip

    response = api.get("/api/groups/")

    assert response.status_code == 200
    [body] = response.json()["results"]
    assert body["name"] == "team"
    assert body["description"] == "The web team"
    assert body["key_count"] == 2
    assert body["rpm"] == 100
    assert body["month"] == {"requests": 7, "tokens": 3, "cost_micros": 700}


def test_a_group_is_created_with_its_shared_limits(api, owner):
    response = api.post(
        "/api/groups/",
        {"name": "team", "description": "Web", "quota_tokens": 500_000, "quota_reset": "weekly",
         "credit_limit_micros": 9_000_000, "rpm": 10, "tpm": 20, "rpd": 30},
    )  # fmt: skip

    assert response.status_code == 201, response.content
    group = TokenGroup.objects.get(owner=owner)
    assert (group.name, group.description) == ("team", "Web")
    assert (group.quota_tokens, group.quota_reset) == (500_000, "weekly")
    assert group.quota_next_reset_at is not None
    assert group.credit_limit_micros == 9_000_000
    assert (group.rpm, group.tpm, group.rpd) == (10, 20, 30)
    assert response.json()["key_count"] == 0


def test_a_second_group_with_the_same_name_is_a_400_on_name(api, owner):
    TokenGroupFactory(owner=owner, name="team")

    error = assert_error(api.post("/api/groups/", {"name": "team"}), 400)

    assert error["fields"] == {"name": ["a group named 'team' already exists"]}
    assert TokenGroup.objects.filter(owner=owner).count() == 1


def test_the_owner_reads_and_patches_a_group(api, owner):
    group = TokenGroupFactory(owner=owner, name="team", rpm=5, quota_used_tokens=77)

    assert api.get(f"/api/groups/{group.pk}/").json()["name"] == "team"
    response = api.patch(f"/api/groups/{group.pk}/", {"rpm": None, "quota_tokens": 1_000})

    assert response.status_code == 200
    group.refresh_from_db()
    assert (group.rpm, group.quota_tokens, group.quota_used_tokens) == (None, 1_000, 77)


def test_deleting_a_group_leaves_its_keys_in_no_group(api, owner):
    group = TokenGroupFactory(owner=owner)
    token = ApiTokenFactory(owner=owner, group=group)

    assert api.delete(f"/api/groups/{group.pk}/").status_code == 204

    assert not TokenGroup.objects.filter(pk=group.pk).exists()
    token.refresh_from_db()
    assert token.group is None


def test_an_outsider_cannot_read_patch_delete_or_fill_the_owners_group(
    outsider_api, owner, outsider
):
    group = TokenGroupFactory(owner=owner, name="team", rpm=5)
    theirs = ApiTokenFactory(owner=outsider)

    assert_error(outsider_api.get(f"/api/groups/{group.pk}/"), 404)
    assert_error(outsider_api.patch(f"/api/groups/{group.pk}/", {"rpm": 1}), 404)
    assert_error(outsider_api.delete(f"/api/groups/{group.pk}/"), 404)
    assert_error(outsider_api.post(f"/api/groups/{group.pk}/keys/", {"ids": [theirs.pk]}), 404)
    group.refresh_from_db()
    assert group.rpm == 5
    theirs.refresh_from_db()
    assert theirs.group is None


def test_keys_move_into_a_group_and_an_outsiders_ids_are_not_found(api, owner, outsider):
    old = TokenGroupFactory(owner=owner, name="old")
    new = TokenGroupFactory(owner=owner, name="new")
    moving = ApiTokenFactory(owner=owner, group=old)
    staying = ApiTokenFactory(owner=owner, group=new)
    theirs = ApiTokenFactory(owner=outsider)

    response = api.post(f"/api/groups/{new.pk}/keys/", {"ids": [moving.pk, staying.pk, theirs.pk]})

    assert response.status_code == 200
    assert response.json() == {
        "changed": [moving.pk],
        "unchanged": [staying.pk],
        "not_found": [theirs.pk],
    }
    moving.refresh_from_db()
    theirs.refresh_from_db()
    assert moving.group == new
    assert theirs.group is None


def test_the_csv_export_answers_a_client_that_asks_for_csv(api, owner):
    ApiTokenFactory(owner=owner, name="web")

    response = api.client.get("/api/keys/export.csv", headers={**api.headers, "Accept": "text/csv"})

    assert response.status_code == 200
    assert b"".join(response.streaming_content).decode().startswith("id,name,prefix,status,")
