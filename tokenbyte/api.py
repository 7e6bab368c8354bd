"""What every /api/ view shares: the one error shape and pagination (DRF imports this module from
its settings, so it must not import DRF views at import time).

Every error, from DRF or from a service's ApplicationError, is answered as
`{"error": {"type", "code", "message", "fields"}}` with the matching status; `fields` maps an input
field to its messages and is empty when the error is not about one field.
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

from tokenbyte.errors import ApplicationError

# The `type` of each status, so a client can branch without parsing messages.
_ERROR_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
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
        status_code = exc.extra.get("status", status.HTTP_400_BAD_REQUEST)
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

    error = Body()


class Pagination(LimitOffsetPagination):
    """Lists other than logs: `?limit=&offset=`, 50 by default, at most 500."""

    default_limit = 50
    max_limit = 500
