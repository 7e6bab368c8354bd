import pytest
from django.urls import reverse

from tests.factories import RequestLogFactory, UserFactory
from usage.models import RequestLog

pytestmark = pytest.mark.django_db

LOGS = reverse("admin:usage_requestlog_changelist")


def test_request_logs_cannot_be_added(staff_client):
    assert staff_client.get(reverse("admin:usage_requestlog_add")).status_code == 403
    assert staff_client.post(reverse("admin:usage_requestlog_add"), {}).status_code == 403
    assert not RequestLog.objects.exists()


def test_request_logs_cannot_be_deleted(staff_client):
    log = RequestLogFactory()
    url = reverse("admin:usage_requestlog_delete", args=[log.pk])

    assert staff_client.get(url).status_code == 403
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    assert RequestLog.objects.filter(pk=log.pk).exists()
    assert "delete_selected" not in staff_client.get(LOGS).content.decode()


def test_a_request_log_change_form_is_read_only(staff_client):
    log = RequestLogFactory(request_id="req-abc", cost_micros=1_234, status_code=200)
    url = reverse("admin:usage_requestlog_change", args=[log.pk])

    view = staff_client.get(url)
    post = staff_client.post(url, {"request_id": "req-forged", "cost_micros": "0"})

    assert view.status_code == 200
    html = view.content.decode()
    assert '<div class="readonly">req-abc</div>' in html
    assert '<div class="readonly">1234</div>' in html
    assert 'name="cost_micros"' not in html
    assert 'name="_save"' not in html
    assert post.status_code == 403
    log.refresh_from_db()
    assert (log.request_id, log.cost_micros) == ("req-abc", 1_234)


def test_the_log_list_shows_cost_in_usd_and_total_tokens(staff_client):
    RequestLogFactory(request_id="req-1", prompt_tokens=12, completion_tokens=30, cost_micros=1_234)

    html = staff_client.get(LOGS).content.decode()

    assert '<td class="field-total_tokens">42</td>' in html
    assert '<td class="field-cost">$0.001234</td>' in html


def test_the_status_filter_keeps_one_class_of_status(staff_client):
    RequestLogFactory(request_id="req-ok", status_code=200)
    RequestLogFactory(request_id="req-limited", status_code=429)
    RequestLogFactory(request_id="req-upstream", status_code=502)

    response = staff_client.get(LOGS, {"status_class": "4xx"})

    shown = [log.request_id for log in response.context["cl"].result_list]
    assert shown == ["req-limited"]


def test_search_finds_logs_by_exact_user_email_without_a_full_count(staff_client):
    ann = UserFactory(email="ann@example.com")
    RequestLogFactory(request_id="req-ann", user=ann)
    RequestLogFactory(request_id="req-other")

    response = staff_client.get(LOGS, {"q": "ANN@example.com"})

    cl = response.context["cl"]
    assert [log.request_id for log in cl.result_list] == ["req-ann"]
    # show_full_result_count = False: the unfiltered table is never counted.
    assert cl.full_result_count is None
