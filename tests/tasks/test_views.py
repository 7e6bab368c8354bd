import pytest

from tasks.models import AsyncTask
from tests.factories import ApiTokenFactory, AsyncTaskFactory

pytestmark = pytest.mark.django_db


def test_the_tasks_page_lists_the_owners_jobs_and_not_an_outsiders(owner_client, owner):
    key = ApiTokenFactory(owner=owner, name="images")
    AsyncTaskFactory(
        user=owner,
        api_token=key,
        public_id="task_owner001",
        status=AsyncTask.Status.SUCCEEDED,
        cost_micros=40_000,
    )
    AsyncTaskFactory(public_id="task_outsider")

    response = owner_client.get("/tasks/")

    assert response.status_code == 200
    assert [t.public_id for t in response.context["tasks"]] == ["task_owner001"]
    content = response.content.decode()
    for text in ["task_owner001", "Image generation", "dall-e-3", "Succeeded", "images", "$0.04"]:
        assert text in content
    assert "task_outsider" not in content


def test_the_tasks_page_says_when_there_are_no_jobs(owner_client):
    content = owner_client.get("/tasks/").content.decode()

    assert "No async jobs yet." in content


def test_the_tasks_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    key = ApiTokenFactory(owner=owner)
    AsyncTaskFactory.create_batch(10, user=owner, api_token=key)

    with django_assert_max_num_queries(4):
        response = owner_client.get("/tasks/")

    assert response.status_code == 200
