"""The tasks part of /api/: your async image and audio jobs, read-only.

A task is named by its public id (`task_…`), the id POST /v1/tasks answers with.
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.scope import Scope
from tasks.models import AsyncTask
from tasks.selectors import async_tasks_in_scope
from tasks.services import async_task_media_url
from tokenbyte.api import (
    ErrorSerializer,
    KeysetPagination,
    UsdField,
    organization_parameter,
    request_api_scope,
)


def _get_task_in_scope(scope: Scope, task_id: str) -> AsyncTask:
    """The scope's task with this public id; anyone else's is a 404, like a missing one."""
    return get_object_or_404(async_tasks_in_scope(scope=scope), public_id=task_id)


class TaskOutput(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", help_text="The task's public id, task_….")
    model = serializers.CharField(source="model_id")
    key_id = serializers.IntegerField(
        source="api_token_id", allow_null=True, help_text="The API key that submitted it."
    )
    key_name = serializers.SerializerMethodField(help_text="That key's name, if it still exists.")
    cost_micros = serializers.IntegerField(help_text="Charged when the job succeeded, micro-USD.")
    cost_usd = UsdField(source="cost_micros")

    class Meta:
        model = AsyncTask
        ref_name = "Task"
        fields = [
            "id",
            "kind",
            "model",
            "status",
            "key_id",
            "key_name",
            "cost_micros",
            "cost_usd",
            "error",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_key_name(self, task: AsyncTask) -> str | None:
        return task.api_token.name if task.api_token is not None else None


class TaskDetailOutput(TaskOutput):
    input = serializers.JSONField(help_text="The job's parameters as submitted.")
    result = serializers.JSONField(
        allow_null=True, help_text="What the job produced besides its media (a transcript's text)."
    )
    media_url = serializers.SerializerMethodField(
        help_text="The job's media (image, audio, transcript) by a signed URL that needs no "
        "credentials, until media_expires_at; null before it succeeded or once expired."
    )
    media_content_type = serializers.CharField()
    media_expires_at = serializers.DateTimeField(allow_null=True)

    class Meta(TaskOutput.Meta):
        ref_name = "TaskDetail"
        fields = [
            *TaskOutput.Meta.fields, "input", "result", "media_url", "media_content_type",
            "media_expires_at",
        ]  # fmt: skip

    def get_media_url(self, task: AsyncTask) -> str | None:
        return async_task_media_url(task=task)


class TaskListApi(APIView):
    """Your async jobs (or an organization's), newest first, without their input and result
    (see a task for those). Paged by cursor: follow `next`."""

    pagination_class = KeysetPagination

    @extend_schema(
        parameters=[organization_parameter("jobs")],
        responses={200: TaskOutput(many=True), 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="tasks_list",
    )
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            async_tasks_in_scope(scope=request_api_scope(request)), request, view=self
        )
        return paginator.get_paginated_response(TaskOutput(page, many=True).data)


class TaskDetailApi(APIView):
    """One of your async jobs, with its input and result."""

    @extend_schema(
        parameters=[organization_parameter("jobs")],
        responses={200: TaskDetailOutput, 404: ErrorSerializer},
        operation_id="tasks_retrieve",
    )
    def get(self, request: Request, task_id: str) -> Response:
        task = _get_task_in_scope(request_api_scope(request), task_id)
        return Response(TaskDetailOutput(task).data)
