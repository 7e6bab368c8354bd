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
    # The foreign keys' own single-column indexes would repeat the composite ones below (each
    # leads with its column) and cost every settlement's insert a write each.
    user = models.ForeignKey(
        User, on_delete=models.CASCADE, related_name="request_logs", db_index=False
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        db_index=False,
    )  # fmt: skip
    api_token = models.ForeignKey(
        ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_logs",
        db_index=False,
    )  # fmt: skip
    token_name = models.CharField(max_length=100, blank=True)
    group = models.ForeignKey(
        TokenGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="request_logs",
        db_index=False,
    )  # fmt: skip
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
    # Prompt tokens written to the provider's prompt cache (priced at the cache-write price).
    cache_write_tokens = models.PositiveIntegerField(default=0, db_default=0)
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
        # Every list of a user's logs is (created_at DESC, id DESC) after at most one equality:
        # each filter has an index whose last columns are that order, so a page (first or next,
        # by keyset) reads its rows straight off the index. bench/results/logs-latest.md has the
        # plans at 10 million rows.
        indexes = [
            models.Index(fields=["user", "-created_at", "-id"], name="log_user_created"),
            models.Index(fields=["api_token", "-created_at", "-id"], name="log_token_created"),
            models.Index(fields=["group", "-created_at", "-id"], name="log_group_created"),
            models.Index(
                fields=["user", "model_id", "-created_at", "-id"], name="log_user_model_created"
            ),
            models.Index(
                fields=["user", "call_type", "-created_at", "-id"], name="log_user_type_created"
            ),
            models.Index(
                fields=["user", "status_code", "-created_at", "-id"], name="log_user_status"
            ),
            # "Errors only": few rows among many successes.
            models.Index(
                fields=["user", "-created_at", "-id"],
                condition=models.Q(status_code__gte=400),
                name="log_user_errors",
            ),
            # An organization's logs (its owners' and admins' pages), with the id tie-break.
            models.Index(fields=["organization", "-created_at", "-id"], name="log_org_created_id"),
            # Retention deletes by age across users.
            models.Index(fields=["created_at"], name="log_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_id} {self.status_code}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageRollup(models.Model):
    """The user's calls summed per UTC hour, key, group, model and call type.

    Written in the same transaction as each call's log row (billing's settlement), so it is never
    behind the logs, and kept after the logs' retention removes them. Days, weeks and months in the
    user's time zone are sums of these hours. Key, group and organization are plain ids (0 = none),
    not foreign keys: the usage of a deleted key still counts, and the row's identity never changes.
    """

    hour = models.DateTimeField(help_text="Start of the UTC hour")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    organization_id = models.BigIntegerField(default=0)
    key_id = models.BigIntegerField(default=0)
    group_id = models.BigIntegerField(default=0)
    model_id = models.CharField("model", max_length=100)
    call_type = models.CharField(max_length=24)
    requests = models.BigIntegerField(default=0)
    # Calls answered with a status of 400 or more.
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    # micro-USD
    cost_micros = models.BigIntegerField(default=0)
    # Sum of the calls' durations, ms (the average is duration_ms / requests).
    duration_ms = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "user",
                    "hour",
                    "organization_id",
                    "key_id",
                    "group_id",
                    "model_id",
                    "call_type",
                ],
                name="usage_rollup_bucket_unique",
            )
        ]
        indexes = [
            models.Index(fields=["organization_id", "hour"], name="usage_rollup_org_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.hour:%Y-%m-%d %H}h {self.model_id} ×{self.requests}"
