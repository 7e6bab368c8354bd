import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken, PersonalAccessToken, TokenGroup
from accounts.services import access_token_create, api_key_digest
from tests.factories import (
    ApiTokenFactory,
    ChannelFactory,
    ModelFactory,
    RequestLogFactory,
    TokenGroupFactory,
    UsageRollupFactory,
)

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


def test_the_tokens_page_makes_the_same_few_queries_for_one_key_or_many(
    owner_client, owner, django_assert_num_queries
):
    group = TokenGroupFactory(owner=owner)
    ApiTokenFactory(owner=owner, group=group)
    # session, user, the header's balance, keys, this month's usage (one grouped query), groups
    with django_assert_num_queries(6):
        owner_client.get("/tokens/")
    ApiTokenFactory.create_batch(10, owner=owner, group=group)
    for key_id in (1, 2, 3):
        UsageRollupFactory(user=owner, key_id=key_id)

    with django_assert_num_queries(6):
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

    with django_assert_max_num_queries(7):
        response = owner_client.get("/tokens/groups/")

    assert response.status_code == 200


# --- the keys' usage, filters, create, edit, revoke, delete, batches ------------------------------


def test_each_key_shows_this_months_requests_and_cost(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="web")
    idle = ApiTokenFactory(owner=owner, name="idle")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRollupFactory(
        user=owner, hour=hour, key_id=token.pk, requests=1_200, cost_micros=3_456_789
    )
    UsageRollupFactory(user=owner, hour=hour - timedelta(days=45), key_id=token.pk, requests=7)

    response = owner_client.get("/tokens/")

    rows = {t.name: t.month for t in response.context["tokens"]}
    assert (rows["web"].requests, rows["web"].cost_micros) == (1_200, 3_456_789)
    assert (rows["idle"].requests, rows["idle"].cost_micros) == (0, 0)
    content = response.content.decode()
    assert "<span data-month-requests>1,200</span>" in content
    assert "<span data-month-cost>$3.456789</span>" in content
    assert idle.prefix in content


def test_playground_keys_are_not_listed(owner_client, owner):
    ApiTokenFactory(owner=owner, name="browser-playground", is_playground=True)

    response = owner_client.get("/tokens/")

    assert response.context["tokens"] == []
    assert "browser-playground" not in response.content.decode()


def test_the_tokens_page_filters_by_status_group_and_name(owner_client, owner):
    group = TokenGroupFactory(owner=owner, name="team")
    ApiTokenFactory(owner=owner, name="web-prod", group=group)
    ApiTokenFactory(owner=owner, name="web-dev", status=ApiToken.Status.DISABLED)
    ApiTokenFactory(owner=owner, name="ci")

    def names(query: str) -> list[str]:
        return sorted(t.name for t in owner_client.get(f"/tokens/?{query}").context["tokens"])

    assert names("status=disabled") == ["web-dev"]
    assert names(f"group={group.pk}") == ["web-prod"]
    assert names("group=0") == ["ci", "web-dev"]
    assert names("q=web") == ["web-dev", "web-prod"]
    assert "No key matches these filters." in owner_client.get("/tokens/?q=zzz").content.decode()


@pytest.fixture
def callable_model(db):
    model = ModelFactory(model_id="gpt-test", display_name="GPT Test")
    channel = ChannelFactory()
    channel.served_models.add(model)
    ModelFactory(model_id="not-routed")
    return model


def test_the_new_key_form_offers_the_models_the_user_may_call_and_the_owners_groups(
    owner_client, owner, outsider, callable_model
):
    TokenGroupFactory(owner=owner, name="team")
    TokenGroupFactory(owner=outsider, name="theirs")

    response = owner_client.get("/tokens/new/")

    form = response.context["form"]
    assert [value for value, _ in form.fields["allowed_models"].choices] == ["gpt-test"]
    assert [g.name for g in form.fields["group"].queryset] == ["team"]
    content = response.content.decode()
    for label in ["Model allowlist", "Per-request cap (USD)", "Credit limit (USD)",
                  "Requests per minute (RPM)", "Tokens per minute (TPM)", "Requests per day (RPD)",
                  "Token quota", "Quota resets", "Expires", "Group", "IP allowlist"]:  # fmt: skip
        assert f">{label}" in content, label


def test_a_key_is_created_with_every_option_and_shown_once(owner_client, owner, callable_model):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])
    group = TokenGroupFactory(owner=owner, name="team")

    response = owner_client.post(
        "/tokens/new/",
        {
            "name": "production-web",
            "allowed_models": ["gpt-test"],
            "max_cost_per_request_usd": "0.25",
            "credit_limit_usd": "20",
            "rpm": "60",
            "tpm": "100000",
            "rpd": "5000",
            "quota_tokens": "1000000",
            "quota_reset": "monthly",
            "expires_at": "2031-01-15T09:30",
            "group": str(group.pk),
            "allowed_ips": "203.0.113.7, 10.0.0.0/8\n2001:db8::/32",
        },
    )

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(owner=owner)
    key = response.context["key"]
    assert api_key_digest(key) == token.digest
    content = response.content.decode()
    assert content.count(key) == 2  # the field to copy and the SDK example
    assert "This is the only time the key is shown." in content
    assert token.allowed_models == ["gpt-test"]
    assert token.max_cost_per_request_micros == 250_000
    assert token.credit_limit_micros == 20_000_000
    assert (token.rpm, token.tpm, token.rpd) == (60, 100_000, 5_000)
    assert (token.quota_tokens, token.quota_reset) == (1_000_000, "monthly")
    # 09:30 in Tokyo (UTC+9) is 00:30 UTC.
    assert token.expires_at == datetime(2031, 1, 15, 0, 30, tzinfo=UTC)
    assert token.group == group
    assert token.allowed_ips == ["203.0.113.7/32", "10.0.0.0/8", "2001:db8::/32"]
    # Kept nowhere for later: not in the session, not in a message.
    assert key not in str(dict(owner_client.session))
    assert key not in owner_client.get("/tokens/").content.decode()


def test_a_key_with_a_bad_ip_is_not_created_and_the_form_says_why(owner_client, owner):
    response = owner_client.post(
        "/tokens/new/", {"name": "web", "quota_reset": "manual", "allowed_ips": "300.1.1.1"}
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {
        "allowed_ips": ["not an IP address or CIDR range: '300.1.1.1'"]
    }
    assert not ApiToken.objects.exists()


def test_a_key_with_a_negative_limit_is_not_created(owner_client, owner):
    response = owner_client.post(
        "/tokens/new/", {"name": "web", "quota_reset": "manual", "credit_limit_usd": "-1"}
    )

    assert "credit_limit_usd" in response.context["form"].errors
    assert not ApiToken.objects.exists()


def test_the_edit_form_shows_the_keys_settings_in_the_users_zone(owner_client, owner):
    owner.time_zone = "America/New_York"
    owner.save(update_fields=["time_zone"])
    token = ApiTokenFactory(
        owner=owner, name="web", credit_limit_micros=1_500_000, rpm=60,
        expires_at=datetime(2031, 7, 1, 16, 0, tzinfo=UTC), allowed_ips=["10.0.0.0/8"],
    )  # fmt: skip

    content = owner_client.get(f"/tokens/{token.pk}/edit/").content.decode()

    assert 'value="2031-07-01T12:00"' in content  # EDT is UTC-4
    assert 'value="1.5"' in content
    assert 'value="60"' in content
    assert "10.0.0.0/8</textarea>" in content


def test_the_owner_edits_a_key(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="web", rpm=60, quota_used_tokens=99)

    response = owner_client.post(
        f"/tokens/{token.pk}/edit/",
        {"name": "web-2", "quota_reset": "daily", "tpm": "500", "quota_tokens": "1000"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/tokens/"
    token.refresh_from_db()
    assert (token.name, token.rpm, token.tpm, token.quota_tokens) == ("web-2", None, 500, 1000)
    assert token.quota_reset == "daily"
    assert token.quota_next_reset_at is not None
    assert token.quota_used_tokens == 99


def test_an_outsider_cannot_open_or_edit_the_owners_key(client, outsider, owner):
    token = ApiTokenFactory(owner=owner, name="web")
    client.force_login(outsider)

    assert client.get(f"/tokens/{token.pk}/edit/").status_code == 404
    assert (
        client.post(f"/tokens/{token.pk}/edit/", {"name": "x", "quota_reset": "manual"}).status_code
        == 404
    )
    token.refresh_from_db()
    assert token.name == "web"


def test_a_revoked_key_is_not_edited(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="web", status=ApiToken.Status.REVOKED)

    response = owner_client.post(
        f"/tokens/{token.pk}/edit/", {"name": "x", "quota_reset": "manual"}
    )

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.name == "web"


def test_revoking_asks_first_then_revokes_for_good(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="web")

    page = owner_client.get(f"/tokens/{token.pk}/revoke/")
    assert "Revoking is final" in page.content.decode()
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED

    response = owner_client.post(f"/tokens/{token.pk}/revoke/")

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == ApiToken.Status.REVOKED
    assert token.revoked_at is not None


def test_deleting_a_key_asks_first_and_keeps_its_logs(owner_client, owner):
    token = ApiTokenFactory(owner=owner, name="web")
    log = RequestLogFactory(user=owner, api_token=token, token_name="web")

    assert "Deleting is final" in owner_client.get(f"/tokens/{token.pk}/delete/").content.decode()
    response = owner_client.post(f"/tokens/{token.pk}/delete/")

    assert response.status_code == 302
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    log.refresh_from_db()
    assert (log.api_token_id, log.token_name) == (None, "web")


@pytest.mark.parametrize("action", ["revoke", "delete"])
def test_an_outsider_cannot_revoke_or_delete_the_owners_key(client, outsider, owner, action):
    token = ApiTokenFactory(owner=owner)
    client.force_login(outsider)

    assert client.get(f"/tokens/{token.pk}/{action}/").status_code == 404
    assert client.post(f"/tokens/{token.pk}/{action}/").status_code == 404
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ENABLED


def test_batch_revoke_confirms_then_revokes_only_the_owners_keys(owner_client, owner, outsider):
    first, second = ApiTokenFactory.create_batch(2, owner=owner)
    spared = ApiTokenFactory(owner=owner)
    theirs = ApiTokenFactory(owner=outsider)
    ids = [first.pk, second.pk, theirs.pk]

    confirm = owner_client.post("/tokens/batch/", {"action": "revoke", "ids": ids})
    assert confirm.status_code == 200
    assert [t.pk for t in confirm.context["tokens"]] == sorted([first.pk, second.pk], reverse=True)
    assert ApiToken.objects.filter(status="revoked").count() == 0

    response = owner_client.post(
        "/tokens/batch/", {"action": "revoke", "confirm": "yes", "ids": ids}
    )

    assert response.status_code == 302
    statuses = dict(ApiToken.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "revoked", second.pk: "revoked", spared.pk: "enabled",
                        theirs.pk: "enabled"}  # fmt: skip


def test_batch_export_is_the_selected_keys_metadata_as_csv(owner_client, owner, outsider):
    chosen = ApiTokenFactory(owner=owner, name="chosen")
    ApiTokenFactory(owner=owner, name="not-chosen")
    theirs = ApiTokenFactory(owner=outsider, name="theirs")

    response = owner_client.post(
        "/tokens/batch/", {"action": "export", "ids": [chosen.pk, theirs.pk]}
    )

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="tokenbyte-keys-')
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["id", "name", "prefix", "status"]
    assert [row[1] for row in rows[1:]] == ["chosen"]
    assert chosen.digest not in str(rows)


def test_export_all_lists_every_key_of_the_owner(owner_client, owner):
    ApiTokenFactory.create_batch(3, owner=owner)

    response = owner_client.get("/tokens/export.csv")

    text = b"".join(response.streaming_content).decode()
    assert len(text.strip().splitlines()) == 4


# --- groups --------------------------------------------------------------------------------------


def test_the_groups_page_shows_each_groups_usage_this_month(owner_client, owner):
    group = TokenGroupFactory(owner=owner, name="team")
    UsageRollupFactory(user=owner, group_id=group.pk, key_id=5, requests=12, prompt_tokens=1_000,
                       completion_tokens=500, cost_micros=2_500_000)  # fmt: skip

    content = owner_client.get("/tokens/groups/").content.decode()

    assert '<td class="num">12</td>' in content
    assert '<td class="num">1,500</td>' in content
    assert '<td class="num">$2.50</td>' in content


def test_the_owner_creates_a_group_with_its_shared_limits(owner_client, owner):
    response = owner_client.post(
        "/tokens/groups/new/",
        {"name": "team", "description": "Web team", "quota_tokens": "50000",
         "quota_reset": "weekly", "credit_limit_usd": "12.5", "rpm": "10", "tpm": "", "rpd": "100"},
    )  # fmt: skip

    assert response.status_code == 302
    group = TokenGroup.objects.get(owner=owner)
    assert (group.name, group.description, group.quota_tokens) == ("team", "Web team", 50_000)
    assert (group.quota_reset, group.credit_limit_micros) == ("weekly", 12_500_000)
    assert (group.rpm, group.tpm, group.rpd) == (10, None, 100)


def test_a_group_name_is_used_once(owner_client, owner):
    TokenGroupFactory(owner=owner, name="team")

    response = owner_client.post("/tokens/groups/new/", {"name": "team", "quota_reset": "manual"})

    assert response.context["form"].errors == {"name": ["a group named 'team' already exists"]}
    assert TokenGroup.objects.count() == 1


def test_the_owner_edits_a_group(owner_client, owner):
    group = TokenGroupFactory(owner=owner, name="team", rpm=5)

    response = owner_client.post(
        f"/tokens/groups/{group.pk}/edit/", {"name": "core", "quota_reset": "manual", "rpd": "9"}
    )

    assert response.status_code == 302
    group.refresh_from_db()
    assert (group.name, group.rpm, group.rpd) == ("core", None, 9)


def test_deleting_a_group_leaves_its_keys_ungrouped(owner_client, owner):
    group = TokenGroupFactory(owner=owner)
    token = ApiTokenFactory(owner=owner, group=group)

    assert (
        "keep working, in no group"
        in owner_client.get(f"/tokens/groups/{group.pk}/delete/").content.decode()
    )
    owner_client.post(f"/tokens/groups/{group.pk}/delete/")

    assert not TokenGroup.objects.exists()
    token.refresh_from_db()
    assert token.group is None


def test_keys_move_between_groups(owner_client, owner, outsider):
    old = TokenGroupFactory(owner=owner, name="old")
    new = TokenGroupFactory(owner=owner, name="new")
    token = ApiTokenFactory(owner=owner, group=old)
    theirs = ApiTokenFactory(owner=outsider)

    response = owner_client.post(
        "/tokens/groups/move/", {"group": str(new.pk), "ids": [token.pk, theirs.pk]}
    )

    assert response.status_code == 302
    token.refresh_from_db()
    theirs.refresh_from_db()
    assert token.group == new
    assert theirs.group is None
    owner_client.post("/tokens/groups/move/", {"group": "", "ids": [token.pk]})
    token.refresh_from_db()
    assert token.group is None


def test_an_outsider_cannot_touch_the_owners_group(client, outsider, owner):
    group = TokenGroupFactory(owner=owner, name="team")
    mine = ApiTokenFactory(owner=outsider)
    client.force_login(outsider)

    assert client.get(f"/tokens/groups/{group.pk}/edit/").status_code == 404
    assert client.post(f"/tokens/groups/{group.pk}/delete/").status_code == 404
    assert (
        client.post("/tokens/groups/move/", {"group": str(group.pk), "ids": [mine.pk]}).status_code
        == 404
    )
    assert TokenGroup.objects.filter(pk=group.pk, name="team").exists()
    mine.refresh_from_db()
    assert mine.group is None


# --- profile: API access tokens -------------------------------------------------------------------


def test_an_access_token_is_created_in_profile_and_shown_once(owner_client, owner):
    response = owner_client.post(
        "/profile/access-tokens/", {"access-name": "billing-script", "access-expires_at": ""}
    )

    assert response.status_code == 200
    token, secret = response.context["new_access_token"]
    assert secret.startswith("tbp_")
    assert token.user == owner and token.name == "billing-script"
    content = response.content.decode()
    assert "this is the only time it is shown" in content
    assert content.count(secret) == 1
    later = owner_client.get("/profile/").content.decode()
    assert secret not in later
    assert f"{token.prefix}…" in later


def test_an_access_token_with_a_past_expiry_is_refused(owner_client, owner):
    response = owner_client.post(
        "/profile/access-tokens/", {"access-name": "x", "access-expires_at": "2020-01-01T00:00"}
    )

    assert response.status_code == 400
    assert response.context["access_form"].errors == {
        "expires_at": ["the expiry must be in the future"]
    }
    assert not PersonalAccessToken.objects.exists()


def test_the_owner_revokes_an_access_token_and_an_outsider_cannot(client, owner, outsider):
    token, _ = access_token_create(user=owner, name="script")
    client.force_login(outsider)
    assert client.post(f"/profile/access-tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None

    client.force_login(owner)
    response = client.post(f"/profile/access-tokens/{token.pk}/revoke/")

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_an_expired_key_is_edited_without_moving_its_expiry(owner_client, owner):
    expired = datetime(2025, 3, 1, 10, 15, 42, tzinfo=UTC)
    token = ApiTokenFactory(owner=owner, name="old", expires_at=expired)
    form = owner_client.get(f"/tokens/{token.pk}/edit/").context["form"]

    response = owner_client.post(
        f"/tokens/{token.pk}/edit/",
        {"name": "old-renamed", "quota_reset": "manual",
         "expires_at": form["expires_at"].value().strftime("%Y-%m-%dT%H:%M")},
    )  # fmt: skip

    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.name, token.expires_at) == ("old-renamed", expired)
