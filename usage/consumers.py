"""The dashboard's live recent calls: a websocket at /ws/dashboard/ (routed in tokenbyte/asgi.py).

The relay never talks to the channel layer (it must not import redis or channels), so nothing is
pushed to this consumer: it polls. Every POLL_SECONDS it reads the newest log rows of the page's
scope (the user's personal ones, or the organization's chosen with the switcher; one query on
that scope's log index) and sends the rows it has not sent yet, rendered as the console renders
them, with refreshed month totals. It tracks request ids, not a timestamp: a call
settles after its answer, so rows commit out of order and a newer row may land before an older
one. It works the same on every channel layer (the embedded in-memory one included), since it
uses none.

Protocol: the browser opens the socket and sends {"type": "hello", "known": [request ids it
shows]}; the server sends {"type": "calls", "rows": [{"request_id", "created_at", "id", "html"}],
"totals": {…}} whenever new rows appear. A connection is closed after MAX_SECONDS (code 4000) so
that a session that ended stops being served; the browser reconnects, authenticated again.
"""

import asyncio
import json
from contextlib import suppress

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from accounts.models import User
from accounts.scope import SESSION_KEY, Scope, membership_for
from billing.selectors import wallet_balance_micros_for_scope
from tokenbyte.money import format_usd
from usage.selectors import request_logs_in_scope, usage_month_in_scope

# The newest rows read at each poll: late commits older than these are left to the Logs page.
LIVE_WINDOW = 20
# The request ids a browser may say it already shows (the dashboard shows ten).
MAX_KNOWN = 50
CLOSE_RECONNECT = 4000


class DashboardConsumer(AsyncWebsocketConsumer):
    poll_seconds: float = 2.0
    max_seconds: float = 15 * 60

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Refused before the handshake completes: the browser sees the connection fail.
            await self.close()
            return
        self.user: User = user
        # The console's scope when the page opened (the organization chosen with the switcher).
        self.organization_id: int | None = await database_sync_to_async(self._organization_id)()
        # Request ids the browser shows or was sent, within the latest window of rows.
        self.sent: set[str] = set()
        self.hello = asyncio.Event()
        await self.accept()
        self.poller = asyncio.create_task(self._poll())

    async def disconnect(self, code: int) -> None:
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json.loads(text_data or "")
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("type") != "hello":
            return
        known = message.get("known")
        if isinstance(known, list):
            self.sent.update(str(request_id)[:64] for request_id in known[:MAX_KNOWN])
        self.hello.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        closes_at = loop.time() + self.max_seconds
        # Wait for the browser's list of what it shows (briefly: without it, everything is new).
        with suppress(TimeoutError):
            await asyncio.wait_for(self.hello.wait(), timeout=self.poll_seconds)
        while loop.time() < closes_at:
            update = await database_sync_to_async(self._update)()
            if update is not None:
                await self.send(text_data=json.dumps(update))
            await asyncio.sleep(self.poll_seconds)
        await self.close(code=CLOSE_RECONNECT)

    def _organization_id(self) -> int | None:
        session = self.scope.get("session")
        org_id = session.get(SESSION_KEY) if session is not None else None
        return org_id if isinstance(org_id, int) else None

    def _scope(self) -> Scope | None:
        """The page's scope, its membership read again at each poll: a lowered role sees only
        its own calls from the next one on; a removed member gets nothing more (None)."""
        if self.organization_id is None:
            return Scope(user=self.user)
        membership = membership_for(user=self.user, organization_id=self.organization_id)
        return Scope(user=self.user, membership=membership) if membership else None

    def _update(self) -> dict | None:
        """The rows not sent yet among the newest, and the month's totals; None if none is new."""
        scope = self._scope()
        if scope is None:
            return None
        logs = list(request_logs_in_scope(scope=scope)[:LIVE_WINDOW])
        new = [log for log in logs if log.request_id not in self.sent]
        # A row that left the window never comes back into it (newer rows pushed it out).
        self.sent = {log.request_id for log in logs}
        if not new:
            return None
        month = usage_month_in_scope(scope=scope)
        balance = wallet_balance_micros_for_scope(scope=scope)
        return {
            "type": "calls",
            "rows": [
                {
                    "request_id": log.request_id,
                    "created_at": log.created_at.isoformat(),
                    "id": log.pk,
                    "html": render_to_string(
                        "partials/log_row.html", {"row": log, "user": self.user}
                    ),
                }
                for log in new
            ],
            "totals": {
                "spend": format_usd(month.cost_micros),
                "tokens": f"{month.tokens:,}",
                "tokens_note": f"{month.prompt_tokens:,} in · {month.completion_tokens:,} out",
                "requests": f"{month.requests:,}",
                "balance": format_usd(balance),
            },
        }
