from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken, User


class AsyncTask(models.Model):
    """An image or audio job submitted through POST /v1/tasks and run by a Celery worker."""

    class Kind(models.TextChoices):
        IMAGE_GENERATION = "image_generation", "Image generation"
        AUDIO_SPEECH = "audio_speech", "Text to speech"
        AUDIO_TRANSCRIPTION = "audio_transcription", "Transcription"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    public_id = models.CharField(max_length=40, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="async_tasks")
    api_token = models.ForeignKey(
        ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="async_tasks"
    )
    kind = models.CharField(max_length=24, choices=Kind.choices)
    model_id = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    input = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # micro-USD charged when the job succeeded.
    cost_micros = models.BigIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True)
    # The client's Idempotency-Key: a retried submit with the same key returns this task.
    idempotency_key = models.CharField(max_length=255, blank=True)
    # The job's output, stored through Django's storage API, served by signed expiring URLs.
    media = models.FileField(upload_to="tasks/%Y/%m/%d/", blank=True)
    media_content_type = models.CharField(max_length=100, blank=True)
    media_expires_at = models.DateTimeField(null=True, blank=True)
    # Past this, a job still queued or running is failed and its hold released.
    deadline_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="task_user_created")]
        constraints = [
            models.CheckConstraint(condition=Q(cost_micros__gte=0), name="task_cost_gte_0"),
            models.UniqueConstraint(
                fields=["api_token", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="task_idempotency_key_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"
