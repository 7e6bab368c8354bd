from django.db.models import Q, QuerySet

from accounts.scope import Scope
from tasks.models import AsyncTask


def async_tasks_in_scope(*, scope: Scope) -> QuerySet[AsyncTask]:
    """The scope's async jobs (an organization's: submitted with its keys), newest first, with
    the key that submitted each and its owner (one query)."""
    return (
        AsyncTask.objects.filter(scope.rows(org_field="api_token__organization"))
        .select_related("api_token", "user")
        .order_by("-created_at", "-id")
    )


def async_tasks_for_key_owner(
    *, owner_id: int, organization_id: int | None = None
) -> QuerySet[AsyncTask]:
    """The jobs of an API key's owner in the key's scope (what /v1/tasks lists for any of their
    keys: personal keys see personal jobs, an organization's keys the owner's jobs there),
    newest first, with the key and its group for the job's log row."""
    scope = (
        Q(api_token__organization_id=organization_id)
        if organization_id is not None
        else Q(api_token__organization__isnull=True)
    )
    return (
        AsyncTask.objects.filter(scope, user_id=owner_id)
        .select_related("api_token__group")
        .order_by("-created_at", "-id")
    )
