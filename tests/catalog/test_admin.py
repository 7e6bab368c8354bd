import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from catalog.models import Channel
from tests.factories import ChannelFactory, ModelFactory, ProviderFactory

pytestmark = pytest.mark.django_db

CHANNELS = reverse("admin:catalog_channel_changelist")


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini"}]}).encode()
        status = 200 if self.path == "/v1/models" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.seen.append((self.path, self.headers.get("Authorization")))

    def log_message(self, format, *args):
        pass  # keep the test output clean


@pytest.fixture
def upstream():
    """A tiny real upstream on a free loopback port that lists its models."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelsHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_test_channel_reports_the_latency_of_a_healthy_upstream(staff_client, upstream):
    port = upstream.server_address[1]
    channel = ChannelFactory(name="primary", base_url=f"http://127.0.0.1:{port}/v1")

    response = staff_client.post(
        CHANNELS, {"action": "test_channel", "_selected_action": [channel.pk]}
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.last_test_latency_ms is not None
    assert channel.last_tested_at is not None
    assert messages_of(response) == [
        ("success", f"primary: OK in {channel.last_test_latency_ms} ms")
    ]
    assert upstream.seen == [("/v1/models", "Bearer upstream-secret")]
    assert channel.last_error == ""


def test_test_channel_reports_the_error_of_a_closed_port(staff_client):
    port = free_port()  # bound, then released: nothing listens there now
    channel = ChannelFactory(name="dead", base_url=f"http://127.0.0.1:{port}/v1")

    response = staff_client.post(
        CHANNELS, {"action": "test_channel", "_selected_action": [channel.pk]}
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.last_error.startswith("ConnectError: ")
    assert messages_of(response) == [
        (
            "error",
            f"dead: failed after {channel.last_test_latency_ms} ms: {channel.last_error}",
        )
    ]


def test_test_channel_reports_an_http_error_status(staff_client, upstream):
    port = upstream.server_address[1]
    channel = ChannelFactory(name="wrong-path", base_url=f"http://127.0.0.1:{port}/api")

    response = staff_client.post(
        CHANNELS, {"action": "test_channel", "_selected_action": [channel.pk]}
    )

    channel.refresh_from_db()
    error = 'HTTP 404: {"object": "list", "data": [{"id": "gpt-4o-mini"}]}'
    assert channel.last_error == error
    assert messages_of(response) == [
        ("error", f"wrong-path: failed after {channel.last_test_latency_ms} ms: {error}")
    ]


def test_channel_pages_never_show_the_upstream_key(staff_client):
    channel = ChannelFactory(api_key="sk-upstream-very-secret")

    changelist = staff_client.get(CHANNELS).content.decode()
    change = staff_client.get(
        reverse("admin:catalog_channel_change", args=[channel.pk])
    ).content.decode()

    assert channel.name in changelist
    assert "sk-upstream-very-secret" not in changelist
    assert "sk-upstream-very-secret" not in change
    assert 'name="new_api_key"' in change


def change_data(channel: Channel, **fields) -> dict:
    data = {
        "name": channel.name,
        "type": channel.type,
        "base_url": channel.base_url,
        "new_api_key": "",
        "served_models": [],
        "model_mapping": "{}",
        "priority": "0",
        "weight": "1",
        "status": channel.status,
        "status_reason": "",
        "connect_timeout_seconds": "10.0",
        "read_timeout_seconds": "120.0",
    }
    return {**data, **fields}


def test_a_blank_api_key_keeps_the_current_one(staff_client):
    channel = ChannelFactory(api_key="keep-me")

    response = staff_client.post(
        reverse("admin:catalog_channel_change", args=[channel.pk]),
        change_data(channel, priority="5"),
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.api_key, channel.priority) == ("keep-me", 5)


def test_a_new_api_key_replaces_the_current_one(staff_client):
    channel = ChannelFactory(api_key="old-key")

    staff_client.post(
        reverse("admin:catalog_channel_change", args=[channel.pk]),
        change_data(channel, new_api_key="new-key"),
    )

    channel.refresh_from_db()
    assert channel.api_key == "new-key"


def test_disabling_a_channel_records_when(staff_client):
    channel = ChannelFactory()
    assert channel.status_changed_at is None

    staff_client.post(
        reverse("admin:catalog_channel_change", args=[channel.pk]),
        change_data(channel, status="disabled", status_reason="provider outage"),
    )

    channel.refresh_from_db()
    assert (channel.status, channel.status_reason) == ("disabled", "provider outage")
    assert channel.status_changed_at is not None


def test_a_channel_is_added_with_its_key_and_models(staff_client):
    model = ModelFactory(model_id="gpt-4o-mini")
    provider = ProviderFactory()

    response = staff_client.post(
        reverse("admin:catalog_channel_add"),
        {
            **change_data(ChannelFactory.build(name="fresh", base_url="https://api.x.test/v1/")),
            "provider": provider.pk,
            "served_models": [model.pk],
            "new_api_key": "sk-fresh",
        },
    )

    assert response.status_code == 302
    channel = Channel.objects.get(name="fresh")
    assert channel.base_url == "https://api.x.test/v1"
    assert channel.api_key == "sk-fresh"
    assert list(channel.served_models.values_list("model_id", flat=True)) == ["gpt-4o-mini"]
