"""The accounts part of /api/: personal access tokens, keys and groups.

The key endpoints take `?organization=<id>`: that organization's keys instead of your personal
ones (you must be a member; an organization you are not in is a 404). There you create keys that
spend from its wallet (when your keys are allowed: else 403 `organization_keys_not_allowed`);
owners and admins read every member's keys and may disable, enable or revoke them, while editing
and deleting a key stay its member's. Groups are personal: an organization's keys have none.
"""

import csv

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.forms import ProfileForm
from accounts.models import ApiToken, PersonalAccessToken, QuotaReset, TokenGroup, User
from accounts.scope import Perm, Scope
from accounts.selectors import (
    MonthUsage,
    access_tokens_for_user,
    api_token_export_rows,
    api_token_month_usage_for_scope,
    api_tokens_for_scope,
    api_tokens_search,
    token_group_month_usage_for_user,
    token_groups_for_user,
)
from accounts.services import (
    BATCH_MAX_IDS,
    access_token_create,
    access_token_revoke,
    api_token_create,
    api_token_delete,
    api_token_set_status,
    api_token_update,
    api_tokens_revoke,
    api_tokens_set_group,
    token_group_create,
    token_group_delete,
    token_group_update,
    user_profile_update,
)
from tokenbyte.api import ErrorSerializer, Pagination, organization_parameter, request_api_scope
from tokenbyte.errors import ApplicationError
from usage.services import log_retention_days_for


def _get_access_token_for_user(user: User, token_id: int) -> PersonalAccessToken:
    """The user's access token with this id; another user's is a 404, like a missing one."""
    return get_object_or_404(access_tokens_for_user(user=user), pk=token_id)


class AccessTokenOutput(serializers.ModelSerializer):
    class Meta:
        model = PersonalAccessToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]


class AccessTokenListApi(APIView):
    """List your personal access tokens, or create one (its secret is in this answer only)."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

        class Meta:
            ref_name = "AccessTokenInput"

    class CreatedSerializer(AccessTokenOutput):
        token = serializers.CharField(help_text="The secret; shown in this answer only.")

        class Meta(AccessTokenOutput.Meta):
            fields = [*AccessTokenOutput.Meta.fields, "token"]
            ref_name = "AccessTokenCreated"

    @extend_schema(responses={200: AccessTokenOutput(many=True)}, operation_id="access_tokens_list")
    def get(self, request: Request) -> Response:
        tokens = access_tokens_for_user(user=request.user)
        return Response(AccessTokenOutput(tokens, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: CreatedSerializer, 400: ErrorSerializer},
        operation_id="access_tokens_create",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = access_token_create(user=request.user, **data.validated_data)
        token.token = secret
        return Response(self.CreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class AccessTokenRevokeApi(APIView):
    """Revoke one of your personal access tokens; it stops working at once."""

    @extend_schema(request=None, responses={200: AccessTokenOutput, 404: ErrorSerializer})
    def post(self, request: Request, token_id: int) -> Response:
        token = _get_access_token_for_user(request.user, token_id)
        access_token_revoke(token=token)
        return Response(AccessTokenOutput(token).data)


# --- keys and groups ---


def _get_key_in_scope(scope: Scope, key_id: int, *, manage: bool = False) -> ApiToken:
    """The key with this id among the scope's keys, and the caller's own: changing and deleting
    a key are its owner's. With manage=True (read, enable, disable, revoke) an organization's
    owners and admins reach every member's key there. Anything else (another user's key, a key
    of another scope, a playground key) is a 404."""
    keys = api_tokens_for_scope(scope=scope)
    if not (manage and scope.can(Perm.MANAGE_KEYS)):
        keys = keys.filter(owner=scope.user)
    return get_object_or_404(keys, pk=key_id)


def _get_group_for_user(user: User, group_id: int) -> TokenGroup:
    """The user's key group with this id; another user's is a 404, like a missing one."""
    return get_object_or_404(token_groups_for_user(user=user), pk=group_id)


def _group_input(user: User, group_id: int | None) -> TokenGroup | None:
    """A group named in a request body: one of the user's, or a 400 on that field."""
    if group_id is None:
        return None
    group = token_groups_for_user(user=user).filter(pk=group_id).first()
    if group is None:
        raise ApplicationError(f"no group with id {group_id}", extra={"param": "group"})
    return group


class MonthUsageOutput(serializers.Serializer):
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField(help_text="micro-USD")


class KeyOutput(serializers.ModelSerializer):
    """A relay key's metadata: never the key, never its digest. Money in micro-USD."""

    organization = serializers.IntegerField(
        source="organization_id",
        allow_null=True,
        help_text="The organization whose wallet the key spends from; null for a personal key.",
    )
    owner_email = serializers.EmailField(
        source="owner.email", help_text="Whose key it is (an organization's member)."
    )
    group_name = serializers.SerializerMethodField()
    is_expired = serializers.SerializerMethodField()
    month = serializers.SerializerMethodField(
        help_text="This month's usage (your time zone; an organization's key: the "
        "organization's), from the hourly rollups."
    )

    class Meta:
        model = ApiToken
        fields = [
            "id", "name", "prefix", "status", "is_expired", "organization", "owner_email",
            "group", "group_name", "expires_at",
            "allowed_models", "allowed_ips", "max_cost_per_request_micros", "credit_limit_micros",
            "credit_used_micros", "rpm", "tpm", "rpd", "quota_tokens", "quota_used_tokens",
            "quota_reset", "quota_next_reset_at", "last_used_at", "created_at", "revoked_at",
            "month",
        ]  # fmt: skip
        read_only_fields = fields

    def get_group_name(self, token: ApiToken) -> str:
        return token.group.name if token.group_id else ""

    def get_is_expired(self, token: ApiToken) -> bool:
        return token.is_expired()

    @extend_schema_field(MonthUsageOutput)
    def get_month(self, token: ApiToken) -> dict:
        usage = self.context.get("usage", {}).get(token.pk, MonthUsage())
        return MonthUsageOutput(usage).data


def _key_context(scope: Scope) -> dict:
    return {"usage": api_token_month_usage_for_scope(scope=scope)}


class KeyInput(serializers.Serializer):
    """Every option of a key. Null limits mean "no limit"; money in micro-USD."""

    name = serializers.CharField(max_length=100)
    group = serializers.IntegerField(required=False, allow_null=True, help_text="A group id.")
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=1000,
        help_text="Public model ids; empty allows every model.",
    )  # fmt: skip
    allowed_ips = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=1000,
        help_text="Addresses or CIDR ranges; empty allows any.",
    )  # fmt: skip
    rpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    tpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    rpd = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    quota_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    quota_reset = serializers.ChoiceField(choices=QuotaReset.choices, required=False)
    max_cost_per_request_micros = serializers.IntegerField(
        required=False, allow_null=True, min_value=0
    )
    credit_limit_micros = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


def _key_kwargs(user: User, data: dict) -> dict:
    if "group" in data:
        data["group"] = _group_input(user, data["group"])
    return data


class KeyListApi(APIView):
    """List your relay keys (filters: status, group — 0 for keys in no group —, q on name or
    prefix), or create one: its secret is in the 201 answer only. With `?organization=`, the
    organization's keys (every member's for owners and admins), and a new key spends from its
    wallet (it has no group)."""

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=ApiToken.Status.choices, required=False)
        group = serializers.IntegerField(required=False, min_value=0)
        q = serializers.CharField(required=False, allow_blank=True, max_length=100)

    class KeyCreatedSerializer(KeyOutput):
        key = serializers.CharField(help_text="The secret key; shown in this answer only.")

        class Meta(KeyOutput.Meta):
            fields = [*KeyOutput.Meta.fields, "key"]
            read_only_fields = fields

    @extend_schema(
        parameters=[FilterSerializer, organization_parameter("keys")],
        responses={200: KeyOutput(many=True), 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="keys_list",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        tokens = api_tokens_search(
            scope=scope,
            status=data.get("status", ""),
            group_id=data.get("group"),
            q=data.get("q", ""),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(tokens, request, view=self)
        output = KeyOutput(page, many=True, context=_key_context(scope))
        return paginator.get_paginated_response(output.data)

    @extend_schema(
        parameters=[organization_parameter("keys")],
        request=KeyInput,
        responses={
            201: KeyCreatedSerializer,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
        operation_id="keys_create",
    )
    def post(self, request: Request) -> Response:
        scope = request_api_scope(request)
        data = KeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        token, key = api_token_create(
            owner=request.user,
            organization=scope.organization,
            **_key_kwargs(request.user, dict(data.validated_data)),
        )
        token.key = key
        body = self.KeyCreatedSerializer(token, context=_key_context(scope)).data
        return Response(body, status=status.HTTP_201_CREATED)


class KeyDetailApi(APIView):
    """One of your keys: read, change any option (PATCH: only the fields sent), or delete it
    (its logs stay, under the key's name). With `?organization=`, owners and admins also read
    every member's key there; changing or deleting one stays its member's (404 for others)."""

    @extend_schema(
        parameters=[organization_parameter("keys")],
        responses={200: KeyOutput, 404: ErrorSerializer},
        operation_id="keys_retrieve",
    )
    def get(self, request: Request, key_id: int) -> Response:
        scope = request_api_scope(request)
        token = _get_key_in_scope(scope, key_id, manage=True)
        return Response(KeyOutput(token, context=_key_context(scope)).data)

    @extend_schema(
        parameters=[organization_parameter("keys")],
        request=KeyInput(partial=True),
        responses={200: KeyOutput, 400: ErrorSerializer, 404: ErrorSerializer,
                   409: ErrorSerializer},
        operation_id="keys_update",
    )  # fmt: skip
    def patch(self, request: Request, key_id: int) -> Response:
        scope = request_api_scope(request)
        token = _get_key_in_scope(scope, key_id)
        data = KeyInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        api_token_update(token=token, **_key_kwargs(request.user, dict(data.validated_data)))
        token = _get_key_in_scope(scope, key_id)
        return Response(KeyOutput(token, context=_key_context(scope)).data)

    @extend_schema(
        parameters=[organization_parameter("keys")],
        request=None,
        responses={204: None, 404: ErrorSerializer},
        operation_id="keys_delete",
    )
    def delete(self, request: Request, key_id: int) -> Response:
        token = _get_key_in_scope(request_api_scope(request), key_id)
        api_token_delete(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class _KeyStatusApi(APIView):
    target_status = ""

    def post(self, request: Request, key_id: int) -> Response:
        scope = request_api_scope(request)
        token = _get_key_in_scope(scope, key_id, manage=True)
        if token.status == ApiToken.Status.REVOKED and self.target_status != token.status:
            raise ApplicationError(
                "the key is revoked; revoking is final", code="revoked", extra={"status": 409}
            )
        api_token_set_status(token=token, status=self.target_status)
        return Response(KeyOutput(token, context=_key_context(scope)).data)


_STATUS_SCHEMA = {
    "parameters": [organization_parameter("keys")],
    "request": None,
    "responses": {200: KeyOutput, 404: ErrorSerializer, 409: ErrorSerializer},
}


@extend_schema_view(post=extend_schema(operation_id="keys_enable", **_STATUS_SCHEMA))
class KeyEnableApi(_KeyStatusApi):
    """Enable a disabled key (a revoked key stays revoked: 409)."""

    target_status = ApiToken.Status.ENABLED


@extend_schema_view(post=extend_schema(operation_id="keys_disable", **_STATUS_SCHEMA))
class KeyDisableApi(_KeyStatusApi):
    """Disable a key; the relay refuses it within a second. It can be enabled again."""

    target_status = ApiToken.Status.DISABLED


@extend_schema_view(post=extend_schema(operation_id="keys_revoke", **_STATUS_SCHEMA))
class KeyRevokeApi(_KeyStatusApi):
    """Revoke a key for good; the relay refuses it within a second."""

    target_status = ApiToken.Status.REVOKED


class IdsInput(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), allow_empty=False, max_length=BATCH_MAX_IDS
    )


class BatchOutput(serializers.Serializer):
    changed = serializers.ListField(child=serializers.IntegerField())
    unchanged = serializers.ListField(
        child=serializers.IntegerField(), help_text="Yours, already in that state."
    )
    not_found = serializers.ListField(
        child=serializers.IntegerField(), help_text="Not one of your keys: nothing changed."
    )


class KeyBatchRevokeApi(APIView):
    """Revoke up to 1000 of your keys at once (with `?organization=`: of the organization's keys
    you may revoke, every member's for owners and admins). Other ids are reported in
    `not_found` and nothing of anyone else's changes."""

    @extend_schema(
        parameters=[organization_parameter("keys")],
        request=IdsInput,
        responses={200: BatchOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="keys_batch_revoke",
    )
    def post(self, request: Request) -> Response:
        scope = request_api_scope(request)
        data = IdsInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = api_tokens_revoke(owner=request.user, ids=data.validated_data["ids"], scope=scope)
        return Response(BatchOutput(result).data)


class KeyBatchReadApi(APIView):
    """The metadata of up to 1000 of your keys (or of `?organization=`'s you may see) in one
    call, in the order asked."""

    class OutputSerializer(serializers.Serializer):
        keys = KeyOutput(many=True)
        not_found = serializers.ListField(child=serializers.IntegerField())

        class Meta:
            ref_name = "KeyBatchReadOutput"

    @extend_schema(
        parameters=[organization_parameter("keys")],
        request=IdsInput,
        responses={200: OutputSerializer, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="keys_batch_read",
    )
    def post(self, request: Request) -> Response:
        scope = request_api_scope(request)
        data = IdsInput(data=request.data)
        data.is_valid(raise_exception=True)
        ids = list(dict.fromkeys(data.validated_data["ids"]))
        found = {t.pk: t for t in api_tokens_for_scope(scope=scope).filter(pk__in=ids)}
        keys = [found[i] for i in ids if i in found]
        context = _key_context(scope)
        return Response(
            {
                "keys": KeyOutput(keys, many=True, context=context).data,
                "not_found": [i for i in ids if i not in found],
            }
        )


class _Echo:
    def write(self, value: str) -> str:
        return value


class KeyExportApi(APIView):
    """Your keys' metadata as CSV (never a key, never its digest); `ids` (comma-separated)
    narrows it to those keys. With `?organization=`, the organization's keys you may see, each
    row ending with its member's email (`member_email`)."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # CSV whatever the Accept header says (`text/csv` included); an error before it is the
        # JSON error body.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "ids", str, description="Comma-separated key ids; all keys when absent."
            ),
            organization_parameter("keys"),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The CSV file."),
            (400, "application/json"): ErrorSerializer,
            (404, "application/json"): ErrorSerializer,
        },
        operation_id="keys_export_csv",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        scope = request_api_scope(request)
        raw = request.query_params.get("ids", "").strip()
        ids = None
        if raw:
            try:
                ids = [int(part) for part in raw.split(",") if part.strip()]
            except ValueError:
                raise ApplicationError(
                    "ids must be comma-separated integers", extra={"param": "ids"}
                ) from None
        writer = csv.writer(_Echo())
        rows = api_token_export_rows(scope=scope, ids=ids)
        response = StreamingHttpResponse(
            (writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = 'attachment; filename="tokenbyte-keys.csv"'
        return response


class GroupOutput(serializers.ModelSerializer):
    key_count = serializers.IntegerField(read_only=True)
    month = serializers.SerializerMethodField(
        help_text="This month's usage of the group's keys in it (the user's time zone)."
    )

    class Meta:
        model = TokenGroup
        fields = [
            "id", "name", "description", "key_count", "quota_tokens", "quota_used_tokens",
            "quota_reset", "quota_next_reset_at", "credit_limit_micros", "credit_used_micros",
            "rpm", "tpm", "rpd", "created_at", "month",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(MonthUsageOutput)
    def get_month(self, group: TokenGroup) -> dict:
        usage = self.context.get("usage", {}).get(group.pk, MonthUsage())
        return MonthUsageOutput(usage).data


def _group_context(user: User) -> dict:
    return {"usage": token_group_month_usage_for_user(user=user)}


class GroupInput(serializers.Serializer):
    """A group's settings; null limits mean "no limit", money in micro-USD."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)
    quota_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    quota_reset = serializers.ChoiceField(choices=QuotaReset.choices, required=False)
    credit_limit_micros = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    rpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    tpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    rpd = serializers.IntegerField(required=False, allow_null=True, min_value=0)


class GroupListApi(APIView):
    """List your key groups, or create one."""

    @extend_schema(responses={200: GroupOutput(many=True)}, operation_id="groups_list")
    def get(self, request: Request) -> Response:
        paginator = Pagination()
        page = paginator.paginate_queryset(
            token_groups_for_user(user=request.user), request, view=self
        )
        output = GroupOutput(page, many=True, context=_group_context(request.user))
        return paginator.get_paginated_response(output.data)

    @extend_schema(
        request=GroupInput,
        responses={201: GroupOutput, 400: ErrorSerializer},
        operation_id="groups_create",
    )
    def post(self, request: Request) -> Response:
        data = GroupInput(data=request.data)
        data.is_valid(raise_exception=True)
        group = token_group_create(owner=request.user, **data.validated_data)
        group = _get_group_for_user(request.user, group.pk)
        return Response(
            GroupOutput(group, context=_group_context(request.user)).data,
            status=status.HTTP_201_CREATED,
        )


class GroupDetailApi(APIView):
    """One of your groups: read, change its settings (PATCH), or delete it (its keys stay, in
    no group)."""

    @extend_schema(
        responses={200: GroupOutput, 404: ErrorSerializer}, operation_id="groups_retrieve"
    )
    def get(self, request: Request, group_id: int) -> Response:
        group = _get_group_for_user(request.user, group_id)
        return Response(GroupOutput(group, context=_group_context(request.user)).data)

    @extend_schema(
        request=GroupInput(partial=True),
        responses={200: GroupOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="groups_update",
    )
    def patch(self, request: Request, group_id: int) -> Response:
        group = _get_group_for_user(request.user, group_id)
        data = GroupInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        token_group_update(group=group, **data.validated_data)
        group = _get_group_for_user(request.user, group_id)
        return Response(GroupOutput(group, context=_group_context(request.user)).data)

    @extend_schema(
        request=None, responses={204: None, 404: ErrorSerializer}, operation_id="groups_delete"
    )
    def delete(self, request: Request, group_id: int) -> Response:
        group = _get_group_for_user(request.user, group_id)
        token_group_delete(group=group)
        return Response(status=status.HTTP_204_NO_CONTENT)


class GroupKeysApi(APIView):
    """Move up to 1000 of your keys into this group. Ids that are not your keys are reported
    in `not_found` and nothing of anyone else's changes."""

    @extend_schema(
        request=IdsInput,
        responses={200: BatchOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="groups_keys_move",
    )
    def post(self, request: Request, group_id: int) -> Response:
        group = _get_group_for_user(request.user, group_id)
        data = IdsInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = api_tokens_set_group(
            owner=request.user, ids=data.validated_data["ids"], group=group
        )
        return Response(BatchOutput(result).data)


# --- profile ---


class ProfileOutput(serializers.ModelSerializer):
    log_retention_days = serializers.SerializerMethodField(
        help_text="How many days your request logs are kept (longer with extended archiving)."
    )

    class Meta:
        model = User
        ref_name = "Profile"
        fields = [
            "email",
            "name",
            "role",
            "time_zone",
            "extended_log_archive",
            "log_retention_days",
            "notify_quota_alerts",
            "notify_low_balance",
        ]
        read_only_fields = fields

    def get_log_retention_days(self, user: User) -> int:
        return log_retention_days_for(
            retention_days=user.log_retention_days, extended_archive=user.extended_log_archive
        )


def _profile_switch_help(field: str) -> str:
    form_field = ProfileForm.base_fields[field]
    return f"{form_field.label}: {form_field.help_text}"


class ProfileApi(APIView):
    """Your profile settings, as on the Profile page; PATCH changes only the fields it sends.
    Email, role and retention are read-only here (email is changed on the Profile page)."""

    class InputSerializer(serializers.Serializer):
        # The rules are ProfileForm's (the view runs it): this types and documents the fields,
        # in the Profile page's words.
        name = serializers.CharField(max_length=150, allow_blank=True, required=False)
        time_zone = serializers.CharField(
            max_length=64,
            required=False,
            help_text="An IANA time zone name, e.g. Europe/Paris. "
            + ProfileForm.base_fields["time_zone"].help_text,
        )
        extended_log_archive = serializers.BooleanField(
            required=False, help_text=_profile_switch_help("extended_log_archive")
        )
        notify_quota_alerts = serializers.BooleanField(
            required=False, help_text=_profile_switch_help("notify_quota_alerts")
        )
        notify_low_balance = serializers.BooleanField(
            required=False, help_text=_profile_switch_help("notify_low_balance")
        )

        class Meta:
            ref_name = "ProfileUpdate"

    @extend_schema(responses={200: ProfileOutput}, operation_id="profile_retrieve")
    def get(self, request: Request) -> Response:
        return Response(ProfileOutput(request.user).data)

    @extend_schema(
        request=InputSerializer,
        responses={200: ProfileOutput, 400: ErrorSerializer},
        operation_id="profile_update",
    )
    def patch(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request.user
        # The fields not sent keep their values; the whole set then passes the Profile page's
        # form, so the page and the API accept exactly the same settings.
        current = {field: getattr(user, field) for field in ProfileForm.base_fields}
        form = ProfileForm.for_user(user, data={**current, **data.validated_data})
        if not form.is_valid():
            raise serializers.ValidationError(
                {
                    "non_field_errors" if field == "__all__" else field: list(messages)
                    for field, messages in form.errors.items()
                }
            )
        user_profile_update(user=user, **form.cleaned_data)
        return Response(ProfileOutput(user).data)
