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


def async_tasks_for_key_owner(*, owner_id: int) -> QuerySet[AsyncTask]:
    """The jobs of an API key's owner (what /v1/tasks lists for any of their keys), newest
    first, with the key and its group for the job's log row."""
    return (
        AsyncTask.objects.filter(user_id=owner_id)
        .select_related("api_token__group")
        .order_by("-created_at", "-id")
    )
