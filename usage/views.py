import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.models import User
from billing.selectors import alerts_for_user, wallet_balance_micros_for_user
from usage.models import RequestLog
from usage.selectors import month_start_for_user, request_logs_for_user, usage_totals_for_user

RECENT_CALLS = 10
LOG_PAGE_SIZE = 100


def _get_log_for_user(user: User, request_id: str) -> RequestLog:
    """The user's log with this request id; another user's log is a 404, like a missing one."""
    try:
        return request_logs_for_user(user=user).get(request_id=request_id)
    except RequestLog.DoesNotExist:
        raise Http404("No such request log.") from None


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    month_start = month_start_for_user(user=request.user)
    context = {
        "month_start": month_start,
        "totals": usage_totals_for_user(user=request.user, since=month_start),
        "balance_micros": wallet_balance_micros_for_user(user=request.user),
        "recent_logs": list(request_logs_for_user(user=request.user)[:RECENT_CALLS]),
        "alerts": list(alerts_for_user(user=request.user, unread_only=True)[:10]),
    }
    return render(request, "usage/dashboard.html", context)


@login_required
def log_list(request: HttpRequest) -> HttpResponse:
    logs = list(request_logs_for_user(user=request.user)[:LOG_PAGE_SIZE])
    return render(request, "usage/log_list.html", {"logs": logs, "page_size": LOG_PAGE_SIZE})


@login_required
def log_detail(request: HttpRequest, request_id: str) -> HttpResponse:
    log = _get_log_for_user(request.user, request_id)
    params = json.dumps(log.request_params, indent=2, sort_keys=True, ensure_ascii=False)
    return render(request, "usage/log_detail.html", {"log": log, "request_params_json": params})
