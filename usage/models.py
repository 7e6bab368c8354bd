from django.db import models
from django.utils import timezone

from accounts.models import ApiToken, Organization, TokenGroup, User
from catalog.models import Channel


class RequestLog(models.Model):
    """One relayed call, successful or not, with its tokens and exact cost.

    Key, group and channel names are copied in so the log still reads right after a key is renamed
    or deleted.
    """

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="request_logs")
    organization = models.ForeignKey(
        Organization, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_token = models.ForeignKey(
        ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_logs"
    )
    token_name = models.CharField(max_length=100, blank=True)
    group = models.ForeignKey(
        TokenGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_logs"
    )
    group_name = models.CharField(max_length=100, blank=True)
    model_id = models.CharField("model", max_length=100)
    upstream_model = models.CharField(max_length=100, blank=True)
    call_type = models.CharField(max_length=24)
    endpoint = models.CharField(max_length=64, blank=True)
    is_stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    duration_ms = models.PositiveIntegerField(default=0)
    # Time to first token of a stream (or to the response of a non-streamed call), ms.
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    # micro-USD actually debited for this call.
    cost_micros = models.BigIntegerField(default=0)
    channel = models.ForeignKey(
        Channel, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_logs"
    )
    channel_name = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # The request's parameters (messages excluded) for the details view.
    request_params = models.JSONField(default=dict, blank=True)
    # The start of the response content, for the details view.
    response_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="log_user_created"),
            models.Index(fields=["api_token", "-created_at"], name="log_token_created"),
            models.Index(fields=["group", "-created_at"], name="log_group_created"),
            models.Index(fields=["user", "model_id", "-created_at"], name="log_user_model_created"),
            models.Index(fields=["user", "call_type", "-created_at"], name="log_user_type_created"),
            models.Index(fields=["user", "status_code", "-created_at"], name="log_user_status"),
            models.Index(fields=["organization", "-created_at"], name="log_org_created"),
            models.Index(fields=["created_at"], name="log_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_id} {self.status_code}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
