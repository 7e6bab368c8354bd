from django.db.models import QuerySet

from accounts.models import User
from tasks.models import AsyncTask


def async_tasks_for_user(*, user: User) -> QuerySet[AsyncTask]:
    """The user's async jobs, newest first, with the key that submitted each (one query)."""
    return (
        AsyncTask.objects.filter(user=user)
        .select_related("api_token")
        .order_by("-created_at", "-id")
    )
