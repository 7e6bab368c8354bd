from django.db import models
from django.db.models import Q
from django.utils import timezone

from tokenbyte.fields import EncryptedTextField


class Provider(models.Model):
    """Who makes a model (OpenAI, Anthropic, Google, DeepSeek, Alibaba Qwen, Moonshot …)."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    website = models.URLField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Model(models.Model):
    """A public model id with its prices. Prices are integer micro-USD."""

    class CallType(models.TextChoices):
        CHAT = "chat", "Chat"
        COMPLETION = "completion", "Completion"
        EMBEDDING = "embedding", "Embeddings"
        IMAGE = "image", "Image"
        AUDIO = "audio", "Audio"

    class PriceUnit(models.TextChoices):
        MTOK = "mtok", "per 1M tokens"
        REQUEST = "request", "per request"
        IMAGE = "image", "per image"
        SECOND = "second", "per second of audio"
        MCHAR = "mchar", "per 1M characters"

    model_id = models.CharField("public id", max_length=100, unique=True)
    display_name = models.CharField(max_length=150)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    description = models.TextField(blank=True)
    context_length = models.PositiveIntegerField(default=0)
    max_output_tokens = models.PositiveIntegerField(default=0)
    call_type = models.CharField(max_length=12, choices=CallType.choices, default=CallType.CHAT)
    price_unit = models.CharField(max_length=10, choices=PriceUnit.choices, default=PriceUnit.MTOK)
    # micro-USD per 1M tokens (price_unit "mtok").
    input_price_micros_per_mtok = models.BigIntegerField(default=0)
    output_price_micros_per_mtok = models.BigIntegerField(default=0)
    # micro-USD per 1M prompt tokens served from the provider's prompt cache; null = input price.
    cached_input_price_micros_per_mtok = models.BigIntegerField(null=True, blank=True)
    # Writing the provider's prompt cache (Anthropic's cache_creation_input_tokens), per 1M
    # tokens; null = the input price.
    cache_write_price_micros_per_mtok = models.BigIntegerField(null=True, blank=True)
    # micro-USD per request / image / second / 1M characters for non-token models.
    unit_price_micros = models.BigIntegerField(default=0)
    # Per-unit prices that depend on the request, by variant key (images: "<size>" or
    # "<size>/<quality>", e.g. {"1024x1024": 40000, "1024x1024/hd": 80000}); a variant not listed
    # costs unit_price_micros.
    unit_price_variants = models.JSONField(default=dict, blank=True)
    # Tags such as "vision", "tools", "streaming", "json", "reasoning".
    capabilities = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    sort_order = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "model_id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(input_price_micros_per_mtok__gte=0)
                & Q(output_price_micros_per_mtok__gte=0)
                & Q(unit_price_micros__gte=0),
                name="model_prices_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return self.model_id

    @property
    def effective_cached_input_price(self) -> int:
        if self.cached_input_price_micros_per_mtok is None:
            return self.input_price_micros_per_mtok
        return self.cached_input_price_micros_per_mtok


class Channel(models.Model):
    """An upstream route: one provider endpoint and key serving some models."""

    class Type(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini"
        MOCK = "mock", "Mock upstream"

    class Status(models.TextChoices):
        ENABLED = "enabled", "Enabled"
        # Disabled by staff; stays off until someone turns it on.
        DISABLED = "disabled", "Disabled"
        # Disabled by the relay after repeated failures; the health probe re-enables it.
        AUTO_DISABLED = "auto_disabled", "Disabled automatically"

    name = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=10, choices=Type.choices)
    provider = models.ForeignKey(
        Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="channels"
    )
    base_url = models.URLField(max_length=300)
    # Encrypted at rest (Fernet, FIELD_ENCRYPTION_KEY).
    api_key = EncryptedTextField(blank=True)
    served_models = models.ManyToManyField(Model, related_name="channels", blank=True)
    # Public model id -> upstream model name, for names that differ.
    model_mapping = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0, help_text="Higher is tried first.")
    weight = models.PositiveIntegerField(default=1, help_text="Share within one priority.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ENABLED)
    status_reason = models.CharField(max_length=255, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    # Failures within the current window; reset by a success or when the window passes.
    failure_count = models.PositiveIntegerField(default=0)
    failure_window_started_at = models.DateTimeField(null=True, blank=True)
    total_failures = models.PositiveBigIntegerField(default=0)
    cooldown_until = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    connect_timeout_seconds = models.FloatField(default=10.0)
    read_timeout_seconds = models.FloatField(default=120.0)
    last_test_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_tested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-priority", "name"]
        indexes = [models.Index(fields=["status", "-priority"], name="channel_status_priority")]

    def __str__(self) -> str:
        return self.name

    def upstream_model(self, public_id: str) -> str:
        return self.model_mapping.get(public_id, public_id)
