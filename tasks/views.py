from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.scope import request_scope
from tasks.models import AsyncTask
from tasks.selectors import async_tasks_in_scope
from tasks.services import async_task_for_media_token, async_task_media_url

TASK_PAGE_SIZE = 100
# While a job is queued or running, the table reloads itself this often.
LIVE_REFRESH_SECONDS = 2
ACTIVE = (AsyncTask.Status.QUEUED, AsyncTask.Status.RUNNING)


@login_required
@require_GET
def task_list(request: HttpRequest) -> HttpResponse:
    scope = request_scope(request)
    tasks = list(async_tasks_in_scope(scope=scope)[:TASK_PAGE_SIZE])
    for task in tasks:
        task.media_url = async_task_media_url(task=task)
    context = {
        "tasks": tasks,
        # An organization's owners and admins see every member's jobs: say whose.
        "show_member": not scope.personal and scope.sees_all,
        "live": any(task.status in ACTIVE for task in tasks),
        "refresh_seconds": LIVE_REFRESH_SECONDS,
    }
    # htmx asks for the table alone while jobs are in flight.
    template = (
        "tasks/_task_table.html" if request.headers.get("HX-Request") else "tasks/task_list.html"
    )
    return render(request, template, context)


@require_GET
def task_media(request: HttpRequest, token: str) -> FileResponse:  # noqa: ARG001
    """A job's stored media, for whoever holds its signed URL, until it expires. The URL is the
    credential (an SDK or a browser fetches it without a session), like a storage's signed URL."""
    task = async_task_for_media_token(token=token)
    if task is None:
        raise Http404("This media link is invalid or has expired.")
    response = FileResponse(task.media.open("rb"), content_type=task.media_content_type)
    remaining = int((task.media_expires_at - timezone.now()).total_seconds())
    response["Cache-Control"] = f"private, max-age={max(remaining, 0)}"
    return response
