"""The usage part of /api/: request logs (filtered, keyset-paged, one call, CSV export), usage
stats and the dashboard.

The filters are the Logs page's (usage.selectors.log_filters_parse); times are answered in the
user's time zone with its offset, money as integer micro-USD and as an exact USD string. Every
endpoint reads the personal account, or with `?organization=<id>` one of the caller's
organizations (accounts.scope.scope_for): all its members' calls for owners and admins, the
caller's own there for a member.
"""

from http import HTTPStatus
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from accounts.models import User
from billing.models import Alert
from tokenbyte.api import ErrorSerializer, organization_parameter, request_api_scope
from usage.models import RequestLog
from usage.selectors import (
    BREAKDOWNS,
    GRANULARITIES,
    LOG_CALL_TYPES,
    SPLITS,
    RollupTotals,
    UsageRange,
    log_filters_parse,
    log_time_iso,
    request_logs_filtered,
    request_logs_page,
    request_logs_with_member,
    shows_member,
    usage_breakdown_in_scope,
    usage_dashboard_in_scope,
    usage_range_for_user,
    usage_rollup_totals_in_scope,
    usage_series_in_scope,
    usd_string,
    user_zone,
)
from usage.views import _get_log_in_scope, log_csv_response, usage_csv_response

LOG_API_DEFAULT_LIMIT = 100
LOG_API_MAX_LIMIT = 1000

FILTER_PARAMETERS = [
    OpenApiParameter(
        "from",
        OpenApiTypes.STR,
        description="Calls at or after this time: ISO 8601 date or date-time; without an offset "
        "it is in your time zone (Profile). A date is its midnight.",
    ),
    OpenApiParameter(
        "to",
        OpenApiTypes.STR,
        description="Calls before this time (same forms as `from`). A date includes that day.",
    ),
    OpenApiParameter("model", OpenApiTypes.STR, description="The model id the call asked for."),
    OpenApiParameter("key", OpenApiTypes.INT, description="The id of one of your keys."),
    OpenApiParameter("group", OpenApiTypes.INT, description="The id of one of your key groups."),
    OpenApiParameter(
        "call_type",
        OpenApiTypes.STR,
        description="The relay endpoint: " + ", ".join(f"`{name}`" for name in LOG_CALL_TYPES),
    ),
    OpenApiParameter(
        "status",
        OpenApiTypes.STR,
        description="`success` (below 400), `error` (400 and above) or one HTTP status code.",
    ),
]
PAGE_PARAMETERS = [
    OpenApiParameter(
        "limit",
        OpenApiTypes.INT,
        description=f"Rows per page: {LOG_API_DEFAULT_LIMIT} by default, at most "
        f"{LOG_API_MAX_LIMIT}.",
    ),
    OpenApiParameter(
        "cursor",
        OpenApiTypes.STR,
        description="The `next_cursor` of the previous page, as is; omit for the newest calls.",
    ),
]


class UserZoneDateTimeField(serializers.DateTimeField):
    """An instant in the requesting user's zone, to the millisecond (as in the CSV export)."""

    def to_representation(self, value: Any) -> str:
        return log_time_iso(value, self.context["zone"])


class LogOutput(serializers.ModelSerializer):
    created_at = UserZoneDateTimeField()
    member_email = serializers.EmailField(
        allow_null=True,
        read_only=True,
        help_text="Who made the call: in an organization's calls for its owners and admins; "
        "null otherwise (the calls are your own).",
    )
    model = serializers.CharField(source="model_id")
    stream = serializers.BooleanField(source="is_stream")
    key_id = serializers.IntegerField(source="api_token_id", allow_null=True)
    key_name = serializers.CharField(source="token_name")
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.SerializerMethodField(help_text="Exact USD, six decimals.")

    class Meta:
        model = RequestLog
        fields = [
            "request_id",
            "created_at",
            "model",
            "upstream_model",
            "call_type",
            "stream",
            "key_id",
            "key_name",
            "group_id",
            "group_name",
            "status_code",
            "error_code",
            "duration_ms",
            "ttft_ms",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "total_tokens",
            "cost_micros",
            "cost_usd",
            "attempts",
            "member_email",
        ]

    def get_cost_usd(self, log: RequestLog) -> str:
        return usd_string(log.cost_micros)


class LogDetailOutput(LogOutput):
    status_reason = serializers.SerializerMethodField()
    request_params = serializers.JSONField(help_text="The request's parameters, messages excluded.")

    class Meta(LogOutput.Meta):
        fields = [
            *LogOutput.Meta.fields,
            "status_reason",
            "endpoint",
            "error_message",
            "request_params",
            "response_excerpt",
            "client_ip",
        ]

    def get_status_reason(self, log: RequestLog) -> str:
        try:
            return HTTPStatus(log.status_code).phrase
        except ValueError:
            return ""


class LogPageOutput(serializers.Serializer):
    results = LogOutput(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last.")
    next_cursor = serializers.CharField(
        allow_null=True, help_text="Pass as `cursor` for the next page; null on the last."
    )


def _limit(request: Request) -> int:
    # As DRF's paginations do: a missing or unusable limit is the default, a big one the max.
    try:
        limit = int(request.query_params["limit"])
    except (KeyError, ValueError):
        return LOG_API_DEFAULT_LIMIT
    return min(limit, LOG_API_MAX_LIMIT) if limit > 0 else LOG_API_DEFAULT_LIMIT


class LogListApi(APIView):
    """Your calls (or an organization's), newest first, filtered like the Logs page and paged by
    cursor (no offsets: every page is as fast as the first, and calls arriving meanwhile never
    shift a page)."""

    @extend_schema(
        parameters=[organization_parameter("calls"), *FILTER_PARAMETERS, *PAGE_PARAMETERS],
        responses={200: LogPageOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="logs_list",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        filters = log_filters_parse(user=request.user, params=request.query_params)
        logs = request_logs_filtered(scope=scope, filters=filters)
        if shows_member(scope):
            logs = request_logs_with_member(logs)
        limit = _limit(request)
        page = request_logs_page(logs, cursor=request.query_params.get("cursor", ""), size=limit)
        next_url = None
        if page.next_cursor:
            next_url = replace_query_param(request.build_absolute_uri(), "limit", limit)
            next_url = replace_query_param(next_url, "cursor", page.next_cursor)
        context = {"zone": user_zone(request.user)}
        return Response(
            {
                "results": LogOutput(page.rows, many=True, context=context).data,
                "next": next_url,
                "next_cursor": page.next_cursor,
            }
        )


class LogDetailApi(APIView):
    """One of your calls (or an organization's) by its request id, with its parameters and the
    start of its answer or its error. A call outside the scope (another user's, another
    member's for a member, a personal one with `organization`) is a 404, like a missing one."""

    @extend_schema(
        parameters=[organization_parameter("calls")],
        responses={200: LogDetailOutput, 404: ErrorSerializer},
        operation_id="logs_retrieve",
    )
    def get(self, request: Request, request_id: str) -> Response:
        log = _get_log_in_scope(request_api_scope(request), request_id)
        context = {"zone": user_zone(request.user)}
        return Response(LogDetailOutput(log, context=context).data)


class LogExportApi(APIView):
    """Your calls with the same filters as CSV, streamed (any number of rows, flat memory).

    Columns: time (ISO 8601 in your zone), request_id, model, call_type, stream, key, group,
    status_code, error_code, duration_ms, ttft_ms, prompt_tokens, completion_tokens,
    cached_tokens, cost_usd (exact, six decimals), attempts; with `organization`, member_email
    last. Newest first.
    """

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is CSV whatever the Accept header says (`text/csv` included); an error
        # before it is the JSON error body.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[organization_parameter("calls"), *FILTER_PARAMETERS],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The CSV file."),
            (400, "application/json"): ErrorSerializer,
            (404, "application/json"): ErrorSerializer,
        },
        operation_id="logs_export_csv",
    )
    def get(self, request: Request) -> HttpResponse:
        scope = request_api_scope(request)
        filters = log_filters_parse(user=request.user, params=request.query_params)
        return log_csv_response(request._request, scope=scope, filters=filters)


# --- usage stats ---
# Read from the hourly rollups, never from the logs (they outlive the logs' retention). `from`
# and `to` are days in the user's time zone, both included; without them, the last 30 days.


class UsageRangeInput(serializers.Serializer):
    # `from` is a Python keyword: declared through the class namespace.
    locals()["from"] = serializers.DateField(
        required=False, help_text="First day (YYYY-MM-DD, your time zone); with `to`."
    )
    to = serializers.DateField(
        required=False, help_text="Last day, included (YYYY-MM-DD); with `from`."
    )

    def range_for(self, user: User) -> UsageRange:
        data = self.validated_data
        first_day, last_day = data.get("from"), data.get("to")
        preset = "custom" if first_day or last_day else "30d"
        return usage_range_for_user(
            user=user, preset=preset, first_day=first_day, last_day=last_day
        )


def _usage_range(
    request: Request, serializer_class: type[UsageRangeInput]
) -> tuple[dict, UsageRange]:
    data = serializer_class(data=request.query_params)
    data.is_valid(raise_exception=True)
    return data.validated_data, data.range_for(request.user)


def _range_out(user: User, days: UsageRange) -> dict:
    return {
        "time_zone": str(user_zone(user)),
        "first_day": days.first_day,
        "last_day": days.last_day,
    }


class UsageTotalsOutput(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Calls answered with a status of 400 or more.")
    error_rate_percent = serializers.FloatField(allow_null=True, help_text="One decimal.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField(source="tokens")
    cost_micros = serializers.IntegerField(help_text="micro-USD")
    cost_usd = serializers.SerializerMethodField(help_text="Exact USD, six decimals.")
    duration_ms = serializers.IntegerField(help_text="Sum of the calls' durations.")
    avg_duration_ms = serializers.IntegerField(allow_null=True)

    def get_cost_usd(self, totals: RollupTotals) -> str:
        return usd_string(totals.cost_micros)


class UsageRangeOutput(serializers.Serializer):
    time_zone = serializers.CharField()
    # Named `from` in the answer, like the parameter.
    locals()["from"] = serializers.DateField(source="first_day")
    to = serializers.DateField(source="last_day")


class UsageSummaryApi(APIView):
    """Your calls (or an organization's), tokens, spend, error rate and mean duration over a
    range of your days."""

    class UsageSummaryOutput(serializers.Serializer):
        range = UsageRangeOutput()
        totals = UsageTotalsOutput()

    @extend_schema(
        parameters=[UsageRangeInput, organization_parameter("calls")],
        responses={200: UsageSummaryOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="usage_summary",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        _, days = _usage_range(request, UsageRangeInput)
        totals = usage_rollup_totals_in_scope(scope=scope, start=days.start, end=days.end)
        body = {"range": _range_out(request.user, days), "totals": totals}
        return Response(self.UsageSummaryOutput(body).data)


class UsageSeriesLineOutput(serializers.Serializer):
    key = serializers.CharField(
        help_text="The model id, key id or group id (0 = none); `other` for the rest; empty for "
        "the total."
    )
    label = serializers.CharField(help_text="The model, key or group name.")
    cost_micros = serializers.ListField(child=serializers.IntegerField(), help_text="micro-USD")
    tokens = serializers.ListField(child=serializers.IntegerField())
    requests = serializers.ListField(child=serializers.IntegerField())


class UsageSeriesOutput(serializers.Serializer):
    granularity = serializers.CharField()
    split = serializers.CharField(allow_null=True)
    buckets = serializers.ListField(
        child=serializers.DateField(),
        help_text="The first day of each day, week (Monday) or month, in your time zone.",
    )
    total = UsageSeriesLineOutput()
    series = UsageSeriesLineOutput(
        source="lines", many=True, help_text="The top values by spend and `other`; empty unsplit."
    )


class UsageSeriesApi(APIView):
    """Spend, tokens and calls (yours, or an organization's) per day, week or month of your time
    zone, optionally split by model, key or group (the `top` values by spend, the rest summed as
    `other`)."""

    class UsageSeriesInput(UsageRangeInput):
        granularity = serializers.ChoiceField(choices=GRANULARITIES, default="day")
        split = serializers.ChoiceField(choices=SPLITS, required=False, allow_blank=True)
        top = serializers.IntegerField(min_value=1, max_value=20, default=5)

    class UsageSeriesResponseOutput(serializers.Serializer):
        range = UsageRangeOutput()
        series = UsageSeriesOutput()

    @extend_schema(
        parameters=[UsageSeriesInput, organization_parameter("calls")],
        responses={200: UsageSeriesResponseOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="usage_series",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        data, days = _usage_range(request, self.UsageSeriesInput)
        series = usage_series_in_scope(
            scope=scope,
            start=days.start,
            end=days.end,
            granularity=data["granularity"],
            split=data.get("split") or None,
            top=data["top"],
        )
        body = {"range": _range_out(request.user, days), "series": series}
        return Response(self.UsageSeriesResponseOutput(body).data)


class UsageBreakdownRowOutput(UsageTotalsOutput):
    key = serializers.CharField(
        help_text="The model id, key id or group id (0 = none), or the member's user id."
    )
    label = serializers.CharField(
        help_text="The model, key or group name; the member's name, or email without one."
    )
    member_email = serializers.CharField(help_text="By member: the member's email; else empty.")


class UsageBreakdownInput(UsageRangeInput):
    by = serializers.ChoiceField(
        choices=BREAKDOWNS,
        help_text="`member` only with `organization`, for its owners and admins (403 for a "
        "member, who sees their own usage only).",
    )


class UsageBreakdownApi(APIView):
    """Your calls (or an organization's) over a range per key, model, group or member, the most
    spent first: requests, error rate, tokens, spend and mean duration. A deleted key or group
    is named by its id."""

    class UsageBreakdownOutput(serializers.Serializer):
        range = UsageRangeOutput()
        by = serializers.CharField()
        results = UsageBreakdownRowOutput(many=True)

    @extend_schema(
        parameters=[UsageBreakdownInput, organization_parameter("calls")],
        responses={
            200: UsageBreakdownOutput,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
        operation_id="usage_breakdown",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        data, days = _usage_range(request, UsageBreakdownInput)
        rows = usage_breakdown_in_scope(scope=scope, start=days.start, end=days.end, by=data["by"])
        body = {"range": _range_out(request.user, days), "by": data["by"], "results": rows}
        return Response(self.UsageBreakdownOutput(body).data)


class UsageExportApi(APIView):
    """One breakdown of your usage (or an organization's) as CSV, the most spent first, as the
    Usage page downloads it.

    Columns: name, id, requests, errors, error_rate_percent, prompt_tokens, completion_tokens,
    cached_tokens, cost_usd (exact, six decimals), cost_micros, avg_duration_ms; by member,
    member_email last.
    """

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # CSV whatever the Accept header says; an error before it is the JSON error body.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[UsageBreakdownInput, organization_parameter("calls")],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The CSV file."),
            (400, "application/json"): ErrorSerializer,
            (403, "application/json"): ErrorSerializer,
            (404, "application/json"): ErrorSerializer,
        },
        operation_id="usage_export_csv",
    )
    def get(self, request: Request) -> HttpResponse:
        scope = request_api_scope(request)
        data, days = _usage_range(request, UsageBreakdownInput)
        rows = usage_breakdown_in_scope(scope=scope, start=days.start, end=days.end, by=data["by"])
        return usage_csv_response(days=days, by=data["by"], rows=rows)


class AlertOutput(serializers.ModelSerializer):
    created_at = UserZoneDateTimeField()

    class Meta:
        model = Alert
        fields = ["id", "kind", "message", "threshold_percent", "created_at"]


class AllowanceOutput(serializers.Serializer):
    monthly_micros = serializers.IntegerField(
        allow_null=True, help_text="The monthly cap, micro-USD; null = no monthly cap."
    )
    used_micros = serializers.IntegerField(
        help_text="Spent this month plus what calls in flight hold, micro-USD."
    )
    left_micros = serializers.IntegerField(
        allow_null=True, help_text="What is left this month, micro-USD; null without a cap."
    )
    period_start = serializers.DateField(
        allow_null=True, help_text="The first day of the month counted (the organization's zone)."
    )


class DashboardApi(APIView):
    """What the dashboard shows: this month's totals (your time zone), the balance, the last 30
    days of spend per day by model, your ten latest calls and your unread alerts. With
    `organization`: the organization's calls (every member's for owners and admins, your own
    for a member), its wallet's balance and your monthly allowance there."""

    class DashboardOutput(serializers.Serializer):
        month_start = UserZoneDateTimeField()
        month = UsageTotalsOutput()
        balance_micros = serializers.IntegerField(help_text="micro-USD")
        balance_usd = serializers.CharField(help_text="Exact USD, six decimals.")
        range = UsageRangeOutput()
        series = UsageSeriesOutput()
        recent_calls = LogOutput(many=True)
        alerts = AlertOutput(many=True)
        allowance = AllowanceOutput(
            allow_null=True, help_text="Your allowance in the organization; null when personal."
        )

    @extend_schema(
        parameters=[organization_parameter("calls")],
        responses={200: DashboardOutput, 404: ErrorSerializer},
        operation_id="dashboard_retrieve",
    )
    def get(self, request: Request) -> Response:
        board = usage_dashboard_in_scope(scope=request_api_scope(request))
        body = {
            "month_start": board.month_start,
            "month": board.month,
            "balance_micros": board.balance_micros,
            "balance_usd": usd_string(board.balance_micros),
            "range": _range_out(request.user, board.days),
            "series": board.series,
            "recent_calls": board.recent_logs,
            "alerts": board.alerts,
            "allowance": board.allowance,
        }
        context = {"zone": user_zone(request.user)}
        return Response(self.DashboardOutput(body, context=context).data)
