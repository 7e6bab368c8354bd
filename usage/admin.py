from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from tokenbyte.admin_site import ViewOnlyAdmin
from tokenbyte.money import format_usd
from usage.models import RequestLog


class StatusClassFilter(admin.SimpleListFilter):
    """Status by class: a range filter, where a per-value filter would scan the whole table."""

    title = "status"
    parameter_name = "status_class"
    ranges = {"2xx": (200, 299), "4xx": (400, 499), "5xx": (500, 599)}

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("2xx", "2xx success"), ("4xx", "4xx client error"), ("5xx", "5xx server error")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[RequestLog]
    ) -> QuerySet[RequestLog]:
        if self.value() not in self.ranges:
            return queryset
        low, high = self.ranges[self.value()]
        return queryset.filter(status_code__gte=low, status_code__lte=high)


@admin.register(RequestLog)
class RequestLogAdmin(ViewOnlyAdmin):
    # Key, group and channel names are copied into the row, so only the user needs a join.
    list_display = (
        "created_at",
        "request_id",
        "user",
        "token_name",
        "model_id",
        "status_code",
        "duration_ms",
        "ttft_ms",
        "total_tokens",
        "cost",
        "channel_name",
    )
    list_select_related = ("user",)
    list_filter = (StatusClassFilter, "is_stream", "created_at", "channel")
    search_fields = ("=request_id", "=user__email", "^model_id", "=token_name")
    search_help_text = "Exact request id, user email or key name; model id prefix"
    # The biggest table: no count(*) of all rows on every page, no date drill-down scan.
    show_full_result_count = False
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "request_id",
                    "created_at",
                    "user",
                    "organization",
                    "api_token",
                    "token_name",
                    "group",
                    "group_name",
                    "client_ip",
                )
            },
        ),
        (
            "Call",
            {
                "fields": (
                    "model_id",
                    "upstream_model",
                    "call_type",
                    "endpoint",
                    "is_stream",
                    "status_code",
                    "duration_ms",
                    "ttft_ms",
                    "channel",
                    "channel_name",
                    "attempts",
                )
            },
        ),
        (
            "Usage and cost",
            {"fields": ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_micros")},
        ),
        (
            "Details",
            {"fields": ("error_code", "error_message", "request_params", "response_excerpt")},
        ),
    )

    @admin.display(description="tokens")
    def total_tokens(self, obj: RequestLog) -> int:
        return obj.total_tokens

    @admin.display(description="cost", ordering="cost_micros")
    def cost(self, obj: RequestLog) -> str:
        return format_usd(obj.cost_micros)
