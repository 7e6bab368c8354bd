"""/api/ for async tasks: the list and one task; owner vs outsider, by access token and by
session."""

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.models import AsyncTask
from tests.factories import ApiTokenFactory, AsyncTaskFactory, PersonalAccessTokenFactory

pytestmark = pytest.mark.django_db


def iso(when: datetime | None) -> str | None:
    """A timestamp as the API writes it (UTC, `Z`)."""
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {PersonalAccessTokenFactory(user=user).secret}"}


@pytest.fixture
def owner_tasks(owner):
    now = timezone.now()
    key = ApiTokenFactory(owner=owner, name="batch-images")
    done = AsyncTaskFactory(
        user=owner,
        public_id="task_done0001",
        api_token=key,
        status=AsyncTask.Status.SUCCEEDED,
        result={"data": [{"url": "https://example.com/lighthouse.png"}]},
        cost_micros=40_000,
        attempts=1,
        created_at=now - timedelta(minutes=5),
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=4),
    )
    queued = AsyncTaskFactory(
        user=owner,
        public_id="task_queued001",
        kind=AsyncTask.Kind.AUDIO_SPEECH,
        model_id="tts-1",
        input={"input": "Hello", "voice": "alloy"},
        created_at=now,
    )
    return {"done": done, "queued": queued, "key": key}


def task_json(task: AsyncTask, *, key_name: str | None, cost_usd: str = "0.000000") -> dict:
    return {
        "id": task.public_id,
        "kind": task.kind,
        "model": task.model_id,
        "status": task.status,
        "key_id": task.api_token_id,
        "key_name": key_name,
        "cost_micros": task.cost_micros,
        "cost_usd": cost_usd,
        "error": task.error,
        "attempts": task.attempts,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
    }


def test_tasks_list_the_owners_jobs_newest_first_without_input_or_result(
    client, owner, outsider, owner_tasks
):
    AsyncTaskFactory(user=outsider, public_id="task_outsider1")

    response = client.get("/api/tasks/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        "results": [
            task_json(owner_tasks["queued"], key_name=None),
            task_json(owner_tasks["done"], key_name="batch-images", cost_usd="0.040000"),
        ],
        "next": None,
        "next_cursor": None,
    }


def test_tasks_page_by_cursor_newest_first(owner_client, owner_tasks):
    first = owner_client.get("/api/tasks/?limit=1").json()
    second = owner_client.get(first["next"]).json()

    assert [task["id"] for task in first["results"]] == ["task_queued001"]
    assert [task["id"] for task in second["results"]] == ["task_done0001"]
    assert second["next"] is None


def test_a_task_shows_its_input_and_result(client, owner, owner_tasks):
    task = owner_tasks["done"]

    response = client.get("/api/tasks/task_done0001/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        **task_json(task, key_name="batch-images", cost_usd="0.040000"),
        "input": {"prompt": "a lighthouse"},
        "result": {"data": [{"url": "https://example.com/lighthouse.png"}]},
        # No stored media on this one (tests/tasks/test_views.py serves a job's media).
        "media_url": None,
        "media_content_type": "",
        "media_expires_at": None,
    }


def test_a_queued_task_has_no_result_yet(owner_client, owner_tasks):
    response = owner_client.get("/api/tasks/task_queued001/")

    assert response.json()["input"] == {"input": "Hello", "voice": "alloy"}
    assert response.json()["result"] is None
    assert response.json()["status"] == "queued"


def test_the_outsider_gets_a_404_for_the_owners_task_like_a_missing_one(
    client, outsider, owner_tasks
):
    headers = bearer(outsider)

    foreign = client.get("/api/tasks/task_done0001/", headers=headers)
    missing = client.get("/api/tasks/task_nosuchtask/", headers=headers)

    assert foreign.status_code == 404
    assert foreign.json() == missing.json()
    assert foreign.json()["error"]["type"] == "not_found"


def test_the_outsider_lists_none_of_the_owners_tasks(client, outsider, owner_tasks):
    response = client.get("/api/tasks/", headers=bearer(outsider))

    assert response.json()["results"] == []


@pytest.mark.parametrize("path", ["/api/tasks/", "/api/tasks/task_done0001/"])
def test_tasks_need_authentication(client, owner_tasks, path):
    response = client.get(path)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_the_task_list_costs_the_same_queries_for_one_task_or_many(owner_client, owner):
    key = ApiTokenFactory(owner=owner)

    def queries_for_the_list() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert owner_client.get("/api/tasks/").status_code == 200
        return len(queries)

    AsyncTaskFactory(user=owner, api_token=key)
    one = queries_for_the_list()
    AsyncTaskFactory.create_batch(5, user=owner, api_token=ApiTokenFactory(owner=owner))
    many = queries_for_the_list()

    assert many == one
