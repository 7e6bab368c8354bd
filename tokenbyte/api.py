"""What every /api/ view shares: the one error shape and pagination (DRF imports this module from
its settings, so it must not import DRF views at import time).

Every error, from DRF or from a service's ApplicationError, is answered as
`{"error": {"type", "code", "message", "fields"}}` with the matching status; `fields` maps an input
field to its messages and is empty when the error is not about one field.
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from accounts.scope import Scope, scope_for
from tokenbyte.errors import ApplicationError
from tokenbyte.keyset import cursor_decode, cursor_encode, rows_after
from tokenbyte.money import micros_to_usd

# The `type` of each status, so a client can branch without parsing messages.
_ERROR_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [message for value in detail.values() for message in _flatten(value)]
    if isinstance(detail, list):
        return [message for value in detail for message in _flatten(value)]
    return [str(detail)]


def _error_body(*, status_code: int, code: str, message: str, fields: dict | None = None) -> dict:
    return {
        "error": {
            "type": _ERROR_TYPES.get(status_code, "server_error"),
            "code": code,
            "message": message,
            "fields": fields or {},
        }
    }


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every handled error in the one shape."""
    from rest_framework.views import exception_handler

    if isinstance(exc, ApplicationError):
        param = exc.extra.get("param")
        fields = {param: [exc.message]} if param else {}
        status_code = exc.status
        body = _error_body(
            status_code=status_code, code=exc.code, message=exc.message, fields=fields
        )
        return Response(body, status=status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    detail = exc.detail
    fields: dict = {}
    if isinstance(exc, exceptions.ValidationError):
        code = "invalid"
        if isinstance(detail, dict):
            fields = {
                name: _flatten(value)
                for name, value in detail.items()
                if name != "non_field_errors"
            }
            general = _flatten(detail.get("non_field_errors", []))
            message = "; ".join(general) or "; ".join(
                f"{name}: {' '.join(messages)}" for name, messages in fields.items()
            )
        else:
            message = "; ".join(_flatten(detail))
    else:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        message = "; ".join(_flatten(detail))
    response.data = _error_body(
        status_code=response.status_code, code=str(code), message=message, fields=fields
    )
    return response


class ErrorSerializer(serializers.Serializer):
    """The error body of every /api/ endpoint (for the schema)."""

    class Body(serializers.Serializer):
        type = serializers.CharField()
        code = serializers.CharField()
        message = serializers.CharField()
        fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))

        class Meta:
            ref_name = "ErrorBody"

    error = Body()


def schema_document_authentication_errors(result: dict, **_context: Any) -> dict:
    """A drf-spectacular POSTPROCESSING_HOOK: every operation that needs a token or a session
    documents its 401 in the one error shape, so no view has to repeat it."""
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    answer = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        "description": "No credentials, or an access token that is unknown, revoked or expired.",
    }
    for item in result.get("paths", {}).values():
        for operation in item.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            # An empty requirement ({}) means the operation is open to anonymous callers.
            if security and {} not in security:
                operation["responses"].setdefault("401", answer)
    return result


@extend_schema_field({"type": "string", "pattern": r"^-?\d+\.\d{6}$", "example": "12.500000"})
class UsdField(serializers.Field):
    """A micro-USD amount as an exact USD string with six places, beside the `_micros` integer:
    `UsdField(source="balance_micros")` answers 12_500_000 as "12.500000"."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: int) -> str:
        return f"{micros_to_usd(value):f}"


class Pagination(LimitOffsetPagination):
    """Lists other than logs: `?limit=&offset=`, 50 by default, at most 500."""

    default_limit = 50
    max_limit = 500


class KeysetPagination(BasePagination):
    """Newest first without OFFSET, for lists that grow without end: `?limit=&cursor=`.

    The rows are ordered by (`time_field` desc, id desc), and the page after a row is the rows
    strictly older than it: `time < t OR (time = t AND id < i)`. An index on (owner, -time)
    answers that at any depth in the same time as the first page, where OFFSET would read and
    throw away every row before it; rows added meanwhile never shift a page or repeat a row.

    The answer is `{"results": [...], "next": url|null, "next_cursor": str|null}`. A cursor is
    opaque (url-safe base64 of the last row's timestamp and id): clients pass it back, never
    build one; a cursor that does not decode is a 400 on `cursor`.

    In a GenericAPIView set `pagination_class = KeysetPagination`; in an APIView set it too (the
    schema then documents the parameters and the page) and page by hand:

        paginator = self.pagination_class()
        rows = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(rows, many=True).data)

    Subclass to page on another timestamp field or change the limits.
    """

    time_field = "created_at"
    default_limit = 50
    max_limit = 500
    cursor_query_param = "cursor"
    limit_query_param = "limit"

    def paginate_queryset(
        self, queryset: QuerySet, request: Request, view: Any = None
    ) -> list[Any]:
        self.request = request
        self.limit = self.get_limit(request)
        queryset = queryset.order_by(f"-{self.time_field}", "-pk")
        cursor = request.query_params.get(self.cursor_query_param)
        if cursor:
            when, pk = cursor_decode(cursor)
            queryset = rows_after(queryset, when=when, pk=pk, field=self.time_field)
        rows = list(queryset[: self.limit + 1])
        self.has_next = len(rows) > self.limit
        rows = rows[: self.limit]
        self.next_cursor = self.encode_cursor(rows[-1]) if self.has_next else None
        return rows

    def get_limit(self, request: Request) -> int:
        # Like DRF's own paginations: a missing or unusable limit is the default, a big one the max.
        try:
            limit = int(request.query_params[self.limit_query_param])
        except (KeyError, ValueError):
            return self.default_limit
        return min(limit, self.max_limit) if limit > 0 else self.default_limit

    def encode_cursor(self, row: Any) -> str:
        return cursor_encode(when=getattr(row, self.time_field), pk=row.pk)

    def get_next_link(self) -> str | None:
        if self.next_cursor is None:
            return None
        url = self.request.build_absolute_uri()
        url = replace_query_param(url, self.limit_query_param, self.limit)
        return replace_query_param(url, self.cursor_query_param, self.next_cursor)

    def get_paginated_response(self, data: list) -> Response:
        return Response(
            {"results": data, "next": self.get_next_link(), "next_cursor": self.next_cursor}
        )

    def get_paginated_response_schema(self, schema: dict) -> dict:
        return {
            "type": "object",
            "required": ["results", "next", "next_cursor"],
            "properties": {
                "results": schema,
                "next": {
                    "type": "string",
                    "format": "uri",
                    "nullable": True,
                    "description": "The next page's URL; null on the last page.",
                },
                "next_cursor": {
                    "type": "string",
                    "nullable": True,
                    "description": "Pass as `cursor` for the next page; null on the last page.",
                },
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict]:
        return [
            {
                "name": self.limit_query_param,
                "required": False,
                "in": "query",
                "description": f"Rows per page: {self.default_limit} by default, at most "
                f"{self.max_limit}.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit},
            },
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "The `next_cursor` of the previous page; omit for the newest rows.",
                "schema": {"type": "string"},
            },
        ]


def organization_parameter(what: str) -> OpenApiParameter:
    """The `organization` query parameter of an endpoint that reads a scope (accounts.scope)."""
    return OpenApiParameter(
        "organization",
        OpenApiTypes.INT,
        description=f"The id of one of your organizations: its {what} instead of your personal "
        "ones (every member's for owners and admins, your own there for a member). Without it, "
        "your personal account only. An organization you are not a member of is a 404.",
    )


def request_api_scope(request: Request) -> Scope:
    """The scope an API call names with `?organization=<id>` (absent: personal)."""
    return scope_for(user=request.user, organization_id=request.query_params.get("organization"))
