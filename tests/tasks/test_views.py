from datetime import timedelta

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from freezegun import freeze_time

from tasks.models import AsyncTask
from tasks.services import async_task_media_expire, async_task_media_url
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

    # Session, user, the header's balance and organizations, the jobs.
    with django_assert_max_num_queries(5):
        response = owner_client.get("/tasks/")

    assert response.status_code == 200


def test_while_a_job_runs_the_table_reloads_itself_and_stops_once_all_are_done(owner_client, owner):
    job = AsyncTaskFactory(user=owner, status=AsyncTask.Status.RUNNING)

    page = owner_client.get("/tasks/").content.decode()
    partial = owner_client.get("/tasks/", headers={"HX-Request": "true"})
    AsyncTask.objects.filter(pk=job.pk).update(status=AsyncTask.Status.SUCCEEDED)
    settled = owner_client.get("/tasks/", headers={"HX-Request": "true"}).content.decode()

    assert 'hx-get="/tasks/" hx-trigger="every 2s"' in page
    assert partial.templates[0].name == "tasks/_task_table.html"
    assert "<html" not in partial.content.decode()
    assert "hx-trigger" not in settled


def test_a_finished_job_links_its_media_by_a_signed_url_that_serves_it(owner_client, owner, client):
    job = AsyncTaskFactory(user=owner, status=AsyncTask.Status.SUCCEEDED)
    job.media.save("job.png", ContentFile(b"\x89PNG fake"), save=False)
    job.media_content_type = "image/png"
    job.media_expires_at = timezone.now() + timedelta(hours=1)
    job.save()

    content = owner_client.get("/tasks/").content.decode()
    url = async_task_media_url(task=job)
    path = url.removeprefix(settings.SITE_URL)
    served = client.get(path)  # no session: the signed URL is the credential

    assert f'<a href="{url}"' in content
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert b"".join(served.streaming_content) == b"\x89PNG fake"
    assert client.get(path[:-3] + "xx/").status_code == 404


def test_an_expired_media_url_is_a_404_and_the_hourly_job_deletes_the_file(
    client, owner, django_capture_on_commit_callbacks
):
    job = AsyncTaskFactory(user=owner, status=AsyncTask.Status.SUCCEEDED)
    job.media.save("old.png", ContentFile(b"old"), save=False)
    job.media_content_type = "image/png"
    job.media_expires_at = timezone.now() + timedelta(minutes=1)
    job.save()
    path = async_task_media_url(task=job).removeprefix(settings.SITE_URL)
    name = job.media.name

    with freeze_time(timezone.now() + timedelta(minutes=2)):
        assert client.get(path).status_code == 404
        with django_capture_on_commit_callbacks(execute=True):
            assert async_task_media_expire() == 1

    job.refresh_from_db()
    assert job.media.name == ""
    assert not default_storage.exists(name)
