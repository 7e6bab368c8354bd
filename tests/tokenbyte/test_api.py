"""/api/ as a whole: the schema is valid OpenAPI 3, the docs page works offline, every path asks
for authentication in the one error shape, access tokens stop at revocation and expiry, errors
share one shape, another user's object is a 404 on every detail path, and keyset pagination."""

import base64
import re
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.validation import validate_schema
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.models import PersonalAccessToken
from accounts.services import access_token_create, access_token_revoke, organization_create
from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    AsyncTaskFactory,
    PersonalAccessTokenFactory,
    RequestLogFactory,
    TokenGroupFactory,
    TopUpFactory,
    WalletFactory,
)
from tokenbyte.api import KeysetPagination
from tokenbyte.keyset import cursor_decode

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
PATH_PARAMETER = re.compile(r"\{([^}]+)\}")


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def schema_of(client) -> dict:
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict) -> list[tuple[str, str]]:
    """Every (method, path template) the schema documents."""
    return [
        (method, path)
        for path, item in sorted(schema["paths"].items())
        for method in HTTP_METHODS
        if method in item
    ]


def call(client, method: str, path: str, **kwargs):
    """One request; unsafe methods send an empty JSON object as the body."""
    if method in ("get", "delete"):
        return getattr(client, method)(path, **kwargs)
    return getattr(client, method)(path, "{}", content_type="application/json", **kwargs)


# --- schema and docs ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_3_and_documents_every_api_area(client):
    schema = schema_of(client)

    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    assert {path.split("/")[2] for path in schema["paths"]} >= {
        "access-tokens",
        "alerts",
        "profile",
        "tasks",
        "topups",
        "wallet",
    }


@pytest.mark.django_db
def test_the_schema_documents_the_401_of_every_operation_in_the_error_shape(client):
    schema = schema_of(client)

    documented = {
        f"{method.upper()} {path}": schema["paths"][path][method]["responses"].get("401")
        for method, path in operations(schema)
    }

    assert documented == {
        operation: {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            "description": "No credentials, or an access token that is unknown, revoked or "
            "expired.",
        }
        for operation in documented
    }


def test_the_schema_generates_without_a_single_warning(tmp_path):
    # The same check as `manage.py spectacular --validate --fail-on-warn`; the warnings it
    # prints are in the captured output when it fails.
    GENERATOR_STATS.reset()

    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml")
    )

    assert (tmp_path / "schema.yml").read_text().startswith("openapi: 3.")


def test_the_docs_page_works_offline_every_script_and_style_comes_from_this_server(
    live_server,
):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        page = http.get("/api/docs/")
        assets = re.findall(r'<(?:script[^>]* src|link[^>]* href)="([^"]+)"', page.text)
        answers = {url: http.get(url).status_code for url in assets}
        schema = http.get("/api/schema/")

    assert page.status_code == 200
    assert '<div id="swagger-ui"></div>' in page.text
    assert "/api/schema/" in page.text
    assert any(url.endswith("swagger-ui-bundle.js") for url in assets)
    assert any(url.endswith("swagger-ui.css") for url in assets)
    assert "/static/css/api_docs.css" in assets
    assert [url for url in assets if not url.startswith("/static/")] == []
    assert answers == {url: 200 for url in assets}
    assert schema.status_code == 200


# --- authentication -----------------------------------------------------------------------------

NOT_AUTHENTICATED = {
    "error": {
        "type": "authentication_error",
        "code": "not_authenticated",
        "message": "Authentication credentials were not provided.",
        "fields": {},
    }
}


def token_refused(message: str) -> dict:
    return {
        "error": {
            "type": "authentication_error",
            "code": "authentication_failed",
            "message": message,
            "fields": {},
        }
    }


@pytest.mark.django_db
def test_every_path_in_the_schema_answers_an_anonymous_request_with_401_in_the_error_shape(
    client,
):
    answers = {}
    for method, template in operations(schema_of(client)):
        path = PATH_PARAMETER.sub("1", template)
        response = call(client, method, path)
        answers[f"{method.upper()} {template}"] = (
            response.status_code,
            response.headers.get("WWW-Authenticate"),
            response.json()
            if response.headers.get("Content-Type", "").startswith("application/json")
            else response.content[:200],
        )

    assert len(answers) > 10
    assert answers == {
        operation: (401, 'Bearer realm="api"', NOT_AUTHENTICATED) for operation in answers
    }


@pytest.mark.django_db
def test_a_revoked_access_token_is_a_401_from_the_moment_it_is_revoked(client, owner):
    token, secret = access_token_create(user=owner, name="nightly export")
    assert client.get("/api/wallet/", headers=bearer(secret)).status_code == 200

    access_token_revoke(token=token)
    response = client.get("/api/wallet/", headers=bearer(secret))

    assert response.status_code == 401
    assert response.json() == token_refused("The access token is unknown, revoked or expired.")


@pytest.mark.django_db
def test_an_expired_access_token_is_a_401(client, owner):
    token, secret = access_token_create(
        user=owner, name="short-lived", expires_at=timezone.now() + timedelta(hours=1)
    )
    PersonalAccessToken.objects.filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = client.get("/api/profile/", headers=bearer(secret))

    assert response.status_code == 401
    assert response.json() == token_refused("The access token is unknown, revoked or expired.")


@pytest.mark.django_db
def test_a_relay_key_is_refused_with_a_hint_to_make_an_access_token(client):
    response = client.get("/api/wallet/", headers=bearer("sk-relay-key-not-for-the-api"))

    assert response.status_code == 401
    assert response.json() == token_refused(
        "That is not a personal access token (tbp_…); create one in Profile."
    )


@pytest.mark.django_db
def test_a_token_of_a_deactivated_user_is_a_401(client, owner):
    token = PersonalAccessTokenFactory(user=owner)
    owner.is_active = False
    owner.save(update_fields=["is_active"])

    response = client.get("/api/wallet/", headers=bearer(token.secret))

    assert response.status_code == 401


# --- the error shape ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_validation_error_is_a_400_naming_each_field(owner_client):
    response = owner_client.post(
        "/api/access-tokens/", {"name": ""}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_request",
            "code": "invalid",
            "message": "name: This field may not be blank.",
            "fields": {"name": ["This field may not be blank."]},
        }
    }


@pytest.mark.django_db
def test_a_missing_object_is_a_404_in_the_error_shape(owner_client):
    response = owner_client.get("/api/tasks/task_missing/")

    assert response.status_code == 404
    assert response.json() == {
        "error": {"type": "not_found", "code": "not_found", "message": "Not found.", "fields": {}}
    }


@pytest.mark.django_db
def test_a_method_the_path_does_not_have_is_a_405_in_the_error_shape(owner_client):
    response = owner_client.delete("/api/wallet/")

    assert response.status_code == 405
    assert response.json() == {
        "error": {
            "type": "method_not_allowed",
            "code": "method_not_allowed",
            "message": 'Method "DELETE" not allowed.',
            "fields": {},
        }
    }


# --- another user's objects ---------------------------------------------------------------------

# The objects owned by a user, by the path segment that names them; each makes one for OWNER and
# returns the id its paths take. A new detail path needs its kind here (the test says which).
OWNED_KINDS = {
    "access-tokens": lambda owner: PersonalAccessTokenFactory(user=owner),
    "alerts": lambda owner: AlertFactory(user=owner),
    "groups": lambda owner: TokenGroupFactory(owner=owner),
    "keys": lambda owner: ApiTokenFactory(owner=owner),
    "logs": lambda owner: RequestLogFactory(user=owner),
    # Its members, invitations and settings paths take the organization's id first.
    "organizations": lambda owner: organization_create(user=owner, name="Owned"),
    "tasks": lambda owner: AsyncTaskFactory(user=owner),
    "topups": lambda owner: TopUpFactory(wallet=WalletFactory(user=owner)),
}
PATH_ID = {"logs": "request_id", "tasks": "public_id"}
# Detail paths of objects nobody owns: the catalog's models are the same for every user; an
# invitation's path takes its link's secret token, which whoever holds it may open (tested in
# tests/accounts/test_org_api.py).
NOT_OWNED = {"models", "invitations"}


def row_of(obj) -> dict:
    obj = type(obj).objects.get(pk=obj.pk)
    return {field.attname: getattr(obj, field.attname) for field in obj._meta.concrete_fields}


@pytest.mark.django_db
def test_an_outsiders_token_gets_a_404_on_every_detail_path_of_the_owners_objects(
    client, owner, outsider
):
    owner_headers = bearer(PersonalAccessTokenFactory(user=owner).secret)
    outsider_headers = bearer(PersonalAccessTokenFactory(user=outsider).secret)
    detail_operations = [
        (method, template)
        for method, template in operations(schema_of(client))
        if PATH_PARAMETER.search(template)
    ]
    kinds = {template.split("/")[2] for _, template in detail_operations}
    assert kinds - NOT_OWNED - OWNED_KINDS.keys() == set(), "add these kinds to OWNED_KINDS"

    answers, unchanged = {}, {}
    for method, template in detail_operations:
        kind = template.split("/")[2]
        if kind in NOT_OWNED:
            continue
        obj = OWNED_KINDS[kind](owner)
        path = PATH_PARAMETER.sub(str(getattr(obj, PATH_ID.get(kind, "pk"))), template)
        before = row_of(obj)
        response = call(client, method, path, headers=outsider_headers)
        answers[f"{method.upper()} {template}"] = (response.status_code, response.json())
        unchanged[f"{method.upper()} {template}"] = row_of(obj) == before
        if method == "get":
            # The same path with the owner's token finds it: the id is the right one.
            assert call(client, method, path, headers=owner_headers).status_code == 200, path

    not_found = {
        "error": {"type": "not_found", "code": "not_found", "message": "Not found.", "fields": {}}
    }
    assert answers == {operation: (404, not_found) for operation in answers}
    assert unchanged == {operation: True for operation in answers}
    # Every kind was tried: a renamed path cannot leave its kind silently untested.
    assert {operation.split()[1].split("/")[2] for operation in answers} == OWNED_KINDS.keys()


# --- keyset pagination --------------------------------------------------------------------------


def page_ids(client, path: str) -> list[list[str]]:
    """The task ids of every page, following `next` to the end."""
    pages = []
    while path:
        body = client.get(path).json()
        pages.append([task["id"] for task in body["results"]])
        path = body["next"]
    return pages


@pytest.mark.django_db
def test_keyset_pages_break_ties_on_the_same_timestamp_by_id_and_never_repeat_a_row(
    owner_client, owner
):
    now = timezone.now()
    older = AsyncTaskFactory(user=owner, public_id="task_older", created_at=now - timedelta(1))
    same = [AsyncTaskFactory(user=owner, public_id=f"task_same{i}", created_at=now) for i in "abc"]

    pages = page_ids(owner_client, "/api/tasks/?limit=2")

    assert pages == [
        [same[2].public_id, same[1].public_id],
        [same[0].public_id, older.public_id],
    ]


@pytest.mark.django_db
def test_a_row_added_after_the_first_page_does_not_shift_the_next_one(owner_client, owner):
    now = timezone.now()
    for minutes in range(4):
        AsyncTaskFactory(
            user=owner, public_id=f"task_{minutes}", created_at=now - timedelta(minutes=minutes)
        )
    first = owner_client.get("/api/tasks/?limit=2").json()

    AsyncTaskFactory(user=owner, public_id="task_new", created_at=now + timedelta(seconds=1))
    second = owner_client.get(first["next"]).json()

    assert [task["id"] for task in first["results"]] == ["task_0", "task_1"]
    assert [task["id"] for task in second["results"]] == ["task_2", "task_3"]
    assert second["next"] is None


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ({}, 50),
        ({"limit": "7"}, 7),
        ({"limit": "100000"}, 500),
        ({"limit": "x"}, 50),
        ({"limit": "0"}, 50),
    ],
)
def test_the_keyset_limit_defaults_to_50_and_is_capped_at_500(query, limit):
    request = Request(APIRequestFactory().get("/api/tasks/", query))

    assert KeysetPagination().get_limit(request) == limit


@pytest.mark.parametrize(
    "position",
    [
        '["2026-12-01T10:00:00+00:00", 99999999999999999999]',  # beyond a bigint
        '["2026-12-01T10:00:00", 5]',  # no offset
        '["yesterday", 5]',
        '["2026-12-01T10:00:00+00:00", true]',
        '{"t": 1}',
    ],
)
@pytest.mark.django_db
def test_a_forged_cursor_is_a_400_on_cursor_never_a_database_error(owner_client, position):
    cursor = base64.urlsafe_b64encode(position.encode()).decode()

    response = owner_client.get("/api/tasks/", {"cursor": cursor})

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["cursor"]


@pytest.mark.django_db
def test_a_keyset_cursor_encodes_the_rows_position_and_reads_back_the_same(owner):
    task = AsyncTaskFactory(user=owner)
    paginator = KeysetPagination()

    cursor = paginator.encode_cursor(task)

    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    assert cursor_decode(cursor) == (task.created_at, task.pk)
