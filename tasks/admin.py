from django.contrib import admin

from tasks.models import AsyncTask
from tokenbyte.admin_site import ViewOnlyAdmin
from tokenbyte.money import format_usd


@admin.register(AsyncTask)
class AsyncTaskAdmin(ViewOnlyAdmin):
    """Jobs are moved along by the Celery worker, and charged when they succeed."""

    list_display = (
        "public_id",
        "user",
        "kind",
        "model_id",
        "status",
        "cost",
        "attempts",
        "created_at",
        "finished_at",
    )
    list_select_related = ("user",)
    list_filter = ("status", "kind", "created_at")
    search_fields = ("=public_id", "=user__email", "=request_id", "^model_id")
    search_help_text = "Exact task id, user email or request id; model id prefix"
    show_full_result_count = False

    @admin.display(description="cost", ordering="cost_micros")
    def cost(self, obj: AsyncTask) -> str:
        return format_usd(obj.cost_micros)
