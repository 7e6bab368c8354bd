from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tasks.selectors import async_tasks_for_user

TASK_PAGE_SIZE = 100


@login_required
def task_list(request: HttpRequest) -> HttpResponse:
    tasks = list(async_tasks_for_user(user=request.user)[:TASK_PAGE_SIZE])
    return render(request, "tasks/task_list.html", {"tasks": tasks})
