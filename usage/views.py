import csv
import json
from http import HTTPStatus
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import render

from accounts.scope import Scope, request_scope
from tokenbyte.errors import ApplicationError
from tokenbyte.money import micros_to_usd
from usage.models import RequestLog
from usage.selectors import (
    DASHBOARD_RECENT_CALLS,
    GRANULARITIES,
    LOG_CALL_TYPES,
    LOG_ERROR_STATUS_FROM,
    LOG_FILTER_PARAMS,
    LOG_LIST_FIELDS,
    LOG_PAGE_SIZE,
    RANGE_PRESETS,
    SPLITS,
    LogFilters,
    LogPage,
    UsageBreakdownRow,
    UsageQuery,
    UsageRange,
    UsageSeries,
    log_csv_filename,
    log_filter_options,
    log_filters_parse,
    request_logs_csv,
    request_logs_csv_async,
    request_logs_filtered,
    request_logs_in_scope,
    request_logs_page,
    request_logs_with_member,
    shows_member,
    usage_breakdown_in_scope,
    usage_breakdowns_for_scope,
    usage_dashboard_in_scope,
    usage_query_parse,
    usage_rollup_totals_in_scope,
    usage_series_in_scope,
)


def _get_log_in_scope(scope: Scope, request_id: str) -> RequestLog:
    """The scope's log with this request id: a call outside it (another user's, a personal one
    in an organization's scope, another member's for a member) is a 404, like a missing one."""
    logs = request_logs_in_scope(scope=scope)
    if shows_member(scope):
        logs = request_logs_with_member(logs)
    try:
        return logs.get(request_id=request_id)
    except RequestLog.DoesNotExist:
        raise Http404("No such request log.") from None


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    scope = request_scope(request)
    board = usage_dashboard_in_scope(scope=scope)
    context = {
        "scope": scope,
        "board": board,
        "month_start": board.month_start,
        "totals": board.month,
        "balance_micros": board.balance_micros,
        "recent_logs": board.recent_logs,
        "recent_columns": RECENT_CALL_COLUMNS,
        "recent_limit": DASHBOARD_RECENT_CALLS,
        # The rows' identities, for static/js/dashboard.js to merge live rows with them.
        "recent_index": [
            {"request_id": log.request_id, "created_at": log.created_at.isoformat(), "id": log.pk}
            for log in board.recent_logs
        ],
        "alerts": board.alerts,
        "allowance": board.allowance,
        "cost_chart": _chart(
            board.series,
            metric="cost_micros",
            chart_id="chart-daily-cost",
            title="Spend per day, by model",
        ),
    }
    return render(request, "usage/dashboard.html", context)


def _log_query(request: HttpRequest, **changes: str) -> str:
    """The page's filters as a query string (kept in links), with some parameters changed."""
    params = {name: request.GET.get(name, "") for name in LOG_FILTER_PARAMS}
    params.update(changes)
    return urlencode({name: value for name, value in params.items() if value})


def log_csv_response(request: HttpRequest, *, scope: Scope, filters: LogFilters) -> HttpResponse:
    """The scope's filtered logs as a streamed CSV download (the page's and the API's export).

    Under ASGI the body must be an async iterator: Django reads a sync one whole into memory
    before sending it. Under WSGI (and the test client) it is the plain generator.
    """
    if isinstance(request, ASGIRequest):
        body = request_logs_csv_async(scope=scope, filters=filters)
    else:
        body = request_logs_csv(scope=scope, filters=filters)
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    filename = log_csv_filename(user=scope.user)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
def log_list(request: HttpRequest) -> HttpResponse:
    scope = request_scope(request)
    member = shows_member(scope)
    error = None
    try:
        filters = log_filters_parse(user=request.user, params=request.GET)
        logs = request_logs_filtered(scope=scope, filters=filters).only(*LOG_LIST_FIELDS)
        if member:
            logs = request_logs_with_member(logs)
        page = request_logs_page(logs, cursor=request.GET.get("cursor", ""))
    except ApplicationError as exc:
        error, filters, page = exc, LogFilters(), LogPage(rows=[], next_cursor=None)
    options = log_filter_options(scope=scope)
    context = {
        "scope": scope,
        "show_member": member,
        "logs": page.rows,
        "page_size": LOG_PAGE_SIZE,
        "filters": filters,
        "values": {name: request.GET.get(name, "") for name in LOG_FILTER_PARAMS},
        "error": error,
        "keys": options["key"],
        "groups": options["group"],
        "call_types": LOG_CALL_TYPES.items(),
        "model_ids": [name for _, name in options["model"]],
        "is_first_page": not request.GET.get("cursor"),
        "next_query": _log_query(request, cursor=page.next_cursor) if page.next_cursor else "",
        "first_query": _log_query(request),
    }
    return render(request, "usage/log_list.html", context)


@login_required
def log_export_csv(request: HttpRequest) -> HttpResponse:
    try:
        filters = log_filters_parse(user=request.user, params=request.GET)
    except ApplicationError as exc:
        return HttpResponseBadRequest(exc.message, content_type="text/plain; charset=utf-8")
    return log_csv_response(request, scope=request_scope(request), filters=filters)


@login_required
def log_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    scope = request_scope(request)
    log = _get_log_in_scope(scope, request_id)
    params = json.dumps(log.request_params, indent=2, sort_keys=True, ensure_ascii=False)
    try:
        reason = HTTPStatus(log.status_code).phrase
    except ValueError:
        reason = ""
    context = {
        "scope": scope,
        "log": log,
        "show_member": shows_member(scope),
        "request_params_json": params,
        "status_reason": reason,
        "call_type_label": LOG_CALL_TYPES.get(log.call_type, log.call_type),
        "is_error": log.status_code >= LOG_ERROR_STATUS_FROM,
    }
    return render(request, "usage/log_detail.html", context)


# --- usage stats ---
# The columns of partials/log_row.html, for the dashboard's live table of recent calls.
RECENT_CALL_COLUMNS = (
    "Time,Model,Key,Status,Duration:num,TTFT:num,In:num,Out:num,Cached:num,Cost:num"
)
_BUCKET_NAMES = {"day": "Day", "week": "Week of", "month": "Month"}
_CHART_UNITS = {"cost_micros": "usd", "tokens": "count", "requests": "count"}
# The usage CSV's columns (the README documents them); by member, the email is added last.
USAGE_CSV_COLUMNS = [
    "name",
    "id",
    "requests",
    "errors",
    "error_rate_percent",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_micros",
    "avg_duration_ms",
]
USAGE_CSV_MEMBER_COLUMN = "member_email"
_BREAKDOWN_TITLES = {
    "model": "By model",
    "key": "By key",
    "group": "By group",
    "member": "By member",
}


def _csv_text(value: str) -> str:
    """A user's name as a CSV cell that a spreadsheet will not run as a formula."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _chart(series: UsageSeries, *, metric: str, chart_id: str, title: str) -> dict:
    """What partials/chart.html draws: the JSON payload of static/js/charts.js and the same
    numbers as table rows (a bucket per row, a column per split value, and the total)."""
    lines = series.lines or [series.total]
    labels = series.bucket_labels
    totals = getattr(series.total, metric)
    unit = _CHART_UNITS[metric]
    return {
        "id": chart_id,
        "data_id": f"{chart_id}-data",
        "title": title,
        "unit": unit,
        "bucket_name": _BUCKET_NAMES[series.granularity],
        "columns": [line.label for line in series.lines],
        "rows": [
            {
                "label": label,
                "values": [getattr(line, metric)[n] for line in series.lines],
                "total": totals[n],
            }
            for n, label in enumerate(labels)
        ],
        "column_totals": [sum(getattr(line, metric)) for line in series.lines],
        "total": sum(totals),
        "payload": {
            "title": title,
            "unit": unit,
            "stacked": bool(series.lines),
            "labels": labels,
            "datasets": [{"label": line.label, "data": getattr(line, metric)} for line in lines],
        },
    }


def _usage_query_or_default(request: HttpRequest) -> tuple[UsageQuery, ApplicationError | None]:
    """The page's query, or the last 30 days with the error to show when the query is wrong."""
    # The range is in the user's days whatever the scope.
    try:
        return usage_query_parse(user=request.user, params=request.GET), None
    except ApplicationError as exc:
        return usage_query_parse(user=request.user, params={}), exc


def _usage_link(query: UsageQuery, **changes: str) -> str:
    params = {
        "range": query.days.preset,
        "granularity": query.granularity,
        "split": query.split or "",
    }
    if query.days.preset == "custom":
        params |= {"from": query.days.first_day.isoformat(), "to": query.days.last_day.isoformat()}
    params |= changes
    if params["range"] != "custom":
        params.pop("from", None)
        params.pop("to", None)
    return urlencode({name: value for name, value in params.items() if value})


@login_required
def usage(request: HttpRequest) -> HttpResponse:
    scope = request_scope(request)
    query, error = _usage_query_or_default(request)
    days = query.days
    series = usage_series_in_scope(
        scope=scope,
        start=days.start,
        end=days.end,
        granularity=query.granularity,
        split=query.split,
    )
    per = query.granularity
    split_name = f", by {query.split}" if query.split else ""
    charts = [
        _chart(
            series, metric=metric, chart_id=f"chart-{name}", title=f"{title} per {per}{split_name}"
        )
        for metric, name, title in (
            ("cost_micros", "cost", "Spend"),
            ("tokens", "tokens", "Tokens"),
            ("requests", "requests", "Requests"),
        )
    ]
    breakdowns = list(usage_breakdowns_for_scope(scope))
    # ?by= (the organization page's "Usage by member" link) puts that table first.
    chosen = request.GET.get("by", "")
    if chosen in breakdowns:
        breakdowns.sort(key=lambda by: by != chosen)
    else:
        chosen = ""
    tables = [
        {
            "by": by,
            "title": _BREAKDOWN_TITLES[by],
            "columns": _breakdown_columns(by),
            "rows": usage_breakdown_in_scope(scope=scope, start=days.start, end=days.end, by=by),
            "csv_query": _usage_link(query, by=by),
        }
        for by in breakdowns
    ]
    context = {
        "scope": scope,
        "query": query,
        "days": days,
        "error": error,
        "totals": usage_rollup_totals_in_scope(scope=scope, start=days.start, end=days.end),
        "charts": charts,
        "tables": tables,
        "presets": [
            {
                "label": label,
                "query": _usage_link(query, range=preset, by=chosen),
                "current": preset == days.preset,
            }
            for preset, label in RANGE_PRESETS.items()
            if preset != "custom"
        ],
        "granularities": GRANULARITIES,
        "splits": SPLITS,
        "chosen_by": chosen,
        "show_by_member": "member" in breakdowns,
    }
    return render(request, "usage/usage.html", context)


def _breakdown_columns(by: str) -> str:
    """The columns of a breakdown table (partials/table.html)."""
    name = "Member" if by == "member" else "Name"
    return f"{name},Requests:num,Error rate:num,In:num,Out:num,Cached:num,Cost:num,Avg duration:num"


def usage_csv_response(*, days: UsageRange, by: str, rows: list[UsageBreakdownRow]) -> HttpResponse:
    """One breakdown of the usage (by key, model, group or member) as a CSV download: a row per
    value, small (the page's and the API's export)."""
    filename = f"usage-by-{by}-{days.first_day:%Y-%m-%d}-to-{days.last_day:%Y-%m-%d}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    member = by == "member"
    writer = csv.writer(response)
    writer.writerow([*USAGE_CSV_COLUMNS, *([USAGE_CSV_MEMBER_COLUMN] if member else [])])
    for row in rows:
        rate = "" if row.error_rate_percent is None else f"{row.error_rate_percent:.1f}"
        writer.writerow(
            [
                _csv_text(row.label),
                _csv_text(row.key),
                row.requests,
                row.errors,
                rate,
                row.prompt_tokens,
                row.completion_tokens,
                row.cached_tokens,
                f"{micros_to_usd(row.cost_micros):f}",
                row.cost_micros,
                "" if row.avg_duration_ms is None else row.avg_duration_ms,
                *([_csv_text(row.member_email)] if member else []),
            ]
        )
    return response


@login_required
def usage_export_csv(request: HttpRequest) -> HttpResponse:
    """One of the Usage page's tables (by key, model, group or member) as CSV."""
    try:
        query = usage_query_parse(user=request.user, params=request.GET)
        by = request.GET.get("by") or "model"
        rows = usage_breakdown_in_scope(
            scope=request_scope(request), start=query.days.start, end=query.days.end, by=by
        )
    except ApplicationError as exc:
        return HttpResponse(
            exc.message, status=exc.status, content_type="text/plain; charset=utf-8"
        )
    return usage_csv_response(days=query.days, by=by, rows=rows)
