"""The dashboard's websocket (usage.consumers.DashboardConsumer): it polls the user's newest log
rows and pushes those the browser does not show yet."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.utils import timezone

from tests.factories import RequestLogFactory, UsageRollupFactory, UserFactory, WalletFactory
from usage.consumers import DashboardConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(DashboardConsumer, "poll_seconds", 0.05)
    yield
    # The consumer's queries ran in asgiref's worker thread: close its connection, or the test
    # database cannot be dropped at the end.
    asyncio.run(sync_to_async(connections.close_all)())


def communicator(user) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/")
    socket.scope["user"] = user
    return socket


create_log = database_sync_to_async(RequestLogFactory)


def test_an_anonymous_visitor_is_refused():
    async def scenario():
        socket = communicator(AnonymousUser())
        connected, _ = await socket.connect()
        return connected

    assert asyncio.run(scenario()) is False


def test_a_new_call_of_the_user_is_pushed_with_the_months_totals():
    user = UserFactory(email="owner@example.com")
    WalletFactory(user=user, balance_micros=4_200_000)
    shown = RequestLogFactory(user=user, request_id="req-shown")
    UsageRollupFactory(user=user, requests=2, prompt_tokens=10, completion_tokens=5, cost_micros=7)

    async def scenario():
        socket = communicator(user)
        connected, _ = await socket.connect()
        assert connected
        await socket.send_json_to({"type": "hello", "known": [shown.request_id]})
        assert await socket.receive_nothing(timeout=0.3)
        new = await create_log(user=user, request_id="req-new", model_id="gpt-live")
        message = await socket.receive_json_from(timeout=3)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
        return new, message

    new, message = asyncio.run(scenario())

    assert message["type"] == "calls"
    assert [row["request_id"] for row in message["rows"]] == ["req-new"]
    row = message["rows"][0]
    assert row["id"] == new.pk
    assert row["created_at"] == new.created_at.isoformat()
    assert '<a href="/logs/req-new/"' in row["html"]
    assert "<td>gpt-live</td>" in row["html"]
    assert message["totals"] == {
        "spend": "$0.000007",
        "tokens": "15",
        "tokens_note": "10 in · 5 out",
        "requests": "2",
        "balance": "$4.20",
    }


def test_another_users_call_is_never_pushed():
    owner = UserFactory(email="owner@example.com")
    outsider = UserFactory(email="outsider@example.com")

    async def scenario():
        socket = communicator(owner)
        await socket.connect()
        await socket.send_json_to({"type": "hello", "known": []})
        await create_log(user=outsider, request_id="req-of-outsider")
        quiet = await socket.receive_nothing(timeout=0.5)
        await create_log(user=owner, request_id="req-of-owner")
        message = await socket.receive_json_from(timeout=3)
        await socket.disconnect()
        return quiet, message

    quiet, message = asyncio.run(scenario())

    assert quiet
    assert [row["request_id"] for row in message["rows"]] == ["req-of-owner"]


def test_a_call_that_commits_after_a_newer_one_is_still_pushed():
    user = UserFactory()
    now = timezone.now()
    newer = RequestLogFactory(user=user, request_id="req-newer", created_at=now)

    async def scenario():
        socket = communicator(user)
        await socket.connect()
        await socket.send_json_to({"type": "hello", "known": [newer.request_id]})
        # Started a second before the shown one, settled after it.
        await create_log(user=user, request_id="req-late", created_at=now - timedelta(seconds=1))
        message = await socket.receive_json_from(timeout=3)
        await socket.disconnect()
        return message

    message = asyncio.run(scenario())

    assert [row["request_id"] for row in message["rows"]] == ["req-late"]


def test_without_a_hello_the_latest_calls_are_sent_once():
    user = UserFactory()
    RequestLogFactory(user=user, request_id="req-1")

    async def scenario():
        socket = communicator(user)
        await socket.connect()
        message = await socket.receive_json_from(timeout=3)
        quiet = await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
        return message, quiet

    message, quiet = asyncio.run(scenario())

    assert [row["request_id"] for row in message["rows"]] == ["req-1"]
    assert quiet


def test_a_connection_is_closed_for_a_fresh_start_after_its_lifetime(monkeypatch):
    monkeypatch.setattr(DashboardConsumer, "max_seconds", 0.2)
    user = UserFactory()

    async def scenario():
        socket = communicator(user)
        await socket.connect()
        await socket.send_json_to({"type": "hello", "known": []})
        return await socket.receive_output(timeout=3)

    assert asyncio.run(scenario()) == {"type": "websocket.close", "code": 4000}


def test_the_site_routes_the_socket_with_the_session_and_refuses_another_sites_page(client):
    # The whole site's ASGI app (it loads the relay too): only this test needs it.
    from tokenbyte.asgi import application

    user = UserFactory()
    RequestLogFactory(user=user, request_id="req-routed")
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    async def connect(origin: str) -> tuple[bool, dict | None]:
        socket = WebsocketCommunicator(
            application,
            "/ws/dashboard/",
            headers=[(b"origin", origin.encode()), (b"cookie", cookie.encode())],
        )
        connected, _ = await socket.connect()
        message = None
        if connected:
            await socket.send_json_to({"type": "hello", "known": []})
            message = await socket.receive_json_from(timeout=3)
            await socket.disconnect()
        return connected, message

    same_site, message = asyncio.run(connect("http://localhost:8000"))
    other_site, _ = asyncio.run(connect("https://evil.example"))

    assert same_site is True
    assert [row["request_id"] for row in message["rows"]] == ["req-routed"]
    assert other_site is False
