from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from catalog.models import Channel, Model, Provider
from catalog.services import channel_test
from tokenbyte.admin_site import URL_FIELD_OVERRIDES
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "website", "model_count")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    formfield_overrides = URL_FIELD_OVERRIDES

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        return super().get_queryset(request).annotate(model_count=Count("models"))

    @admin.display(description="models", ordering="model_count")
    def model_count(self, obj: Provider) -> int:
        return obj.model_count


@admin.register(Model)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = (
        "model_id",
        "display_name",
        "provider",
        "call_type",
        "price_unit",
        "input_price",
        "output_price",
        "unit_price",
        "context_length",
        "enabled",
        "sort_order",
    )
    list_select_related = ("provider",)
    list_filter = ("enabled", "call_type", "price_unit", "provider")
    search_fields = ("model_id", "display_name")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("model_id", "display_name", "provider", "description", "enabled")}),
        (
            "Capabilities",
            {
                "fields": (
                    "call_type",
                    "context_length",
                    "max_output_tokens",
                    "capabilities",
                    "sort_order",
                )
            },
        ),
        (
            "Prices (micro-USD: 1 USD = 1000000)",
            {
                "fields": (
                    "price_unit",
                    "input_price_micros_per_mtok",
                    "output_price_micros_per_mtok",
                    "cached_input_price_micros_per_mtok",
                    "cache_write_price_micros_per_mtok",
                    "unit_price_micros",
                )
            },
        ),
        ("Dates", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="input / 1M", ordering="input_price_micros_per_mtok")
    def input_price(self, obj: Model) -> str:
        return format_usd(obj.input_price_micros_per_mtok)

    @admin.display(description="output / 1M", ordering="output_price_micros_per_mtok")
    def output_price(self, obj: Model) -> str:
        return format_usd(obj.output_price_micros_per_mtok)

    @admin.display(description="unit price", ordering="unit_price_micros")
    def unit_price(self, obj: Model) -> str:
        return format_usd(obj.unit_price_micros)


def _https_by_default(db_field: models.Field, **kwargs) -> forms.Field | None:
    if isinstance(db_field, models.URLField):
        kwargs = {**URL_FIELD_OVERRIDES[models.URLField], **kwargs}
    return db_field.formfield(**kwargs)


class ChannelForm(forms.ModelForm):
    # Write-only: the stored upstream key is never sent back to the browser.
    new_api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )

    class Meta:
        model = Channel
        # Never api_key itself: new_api_key stands in for it.
        fields = (
            "name",
            "type",
            "provider",
            "base_url",
            "served_models",
            "model_mapping",
            "priority",
            "weight",
            "status",
            "status_reason",
            "connect_timeout_seconds",
            "read_timeout_seconds",
        )
        # The admin passes its own callback (with formfield_overrides); this one is for the
        # class itself, built at import.
        formfield_callback = _https_by_default

    def clean_base_url(self) -> str:
        # Upstream paths are appended as f"{base_url}/models".
        return self.cleaned_data["base_url"].rstrip("/")

    def save(self, commit: bool = True) -> Channel:
        if self.cleaned_data.get("new_api_key"):
            self.instance.api_key = self.cleaned_data["new_api_key"]
        return super().save(commit=commit)


HEALTH_FIELDS = (
    "failure_count",
    "failure_window_started_at",
    "total_failures",
    "cooldown_until",
    "last_failure_at",
    "last_error",
    "last_success_at",
    "last_test_latency_ms",
    "last_tested_at",
    "created_at",
)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    formfield_overrides = URL_FIELD_OVERRIDES
    list_display = (
        "name",
        "type",
        "provider",
        "base_url",
        "status",
        "priority",
        "weight",
        "failure_count",
        "last_test_latency_ms",
        "last_tested_at",
        "last_success_at",
    )
    list_select_related = ("provider",)
    list_filter = ("status", "type", "provider")
    search_fields = ("name", "base_url")
    filter_horizontal = ("served_models",)
    # Health fields are written by the relay and the health probe.
    readonly_fields = ("api_key_set", "status_changed_at", *HEALTH_FIELDS)
    fieldsets = (
        (None, {"fields": ("name", "type", "provider", "base_url", "api_key_set", "new_api_key")}),
        ("Routing", {"fields": ("served_models", "model_mapping", "priority", "weight")}),
        ("Status", {"fields": ("status", "status_reason", "status_changed_at")}),
        ("Timeouts (seconds)", {"fields": ("connect_timeout_seconds", "read_timeout_seconds")}),
        ("Health", {"fields": HEALTH_FIELDS}),
    )
    actions = ("test_channel",)

    @admin.display(description="API key", boolean=True)
    def api_key_set(self, obj: Channel) -> bool:
        return bool(obj.api_key)

    def save_model(
        self, request: HttpRequest, obj: Channel, form: ChannelForm, change: bool
    ) -> None:
        if not change or "status" in form.changed_data:
            obj.status_changed_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description="Test channel", permissions=["change"])
    def test_channel(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            try:
                result = channel_test(channel=channel)
            except ApplicationError as exc:
                self.message_user(request, f"{channel.name}: {exc.message}", messages.ERROR)
                continue
            if result.ok:
                self.message_user(
                    request, f"{channel.name}: OK in {result.latency_ms} ms", messages.SUCCESS
                )
            else:
                self.message_user(
                    request,
                    f"{channel.name}: failed after {result.latency_ms} ms: {result.error}",
                    messages.ERROR,
                )
