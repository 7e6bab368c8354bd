"""The HTTP/1.1 protocol the relay is served with: uvicorn's httptools protocol, hardened.

    uvicorn tokenbyte.asgi:application --loop uvloop --http relay.server:RelayHttpProtocol \\
        --timeout-keep-alive 5

uvicorn imports a protocol class named by `--http` (Config.load). On top of uvicorn's protocol:

- a request httptools cannot parse (a bad Content-Length, both Content-Length and
  Transfer-Encoding, bad chunking, a bad request line) is answered 400, an unknown method 501,
  in the relay's JSON error shape rather than uvicorn's plain text;
- a request head over RELAY_MAX_HEADER_BYTES is answered 431, parsed no further than the limit;
- a request head not complete RELAY_HEADER_TIMEOUT_SECONDS after its first byte (or after the
  connection opened, for the first request), or a body without a byte for
  RELAY_BODY_TIMEOUT_SECONDS, is answered 408, or only closed if a response has begun.

Each of these answers closes the connection. An idle keep-alive connection is closed by uvicorn
after `--timeout-keep-alive`; a new connection that sends nothing, after the header timeout.

The hot path pays a few attribute checks per read: one timer per connection, re-armed only when
it fires early (reads in the body move a timestamp, not the timer), and none at all while a
request head or body arrives whole in one read.
"""

import asyncio
import functools
import logging

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from relay.http import RelayError

logger = logging.getLogger(__name__)

# What the connection waits for from the client, which says what the timer checks.
_IDLE = 0  # nothing: the app is answering, or uvicorn's keep-alive timer runs
_OPENED = 1  # the first byte of a new connection
_HEAD = 2  # the rest of a request head
_BODY = 3  # the rest of a request body
_LINGER = 4  # nothing more: refused, the answer sent, input discarded until the close

# How long a refused connection reads and discards input before it is closed (see _linger).
LINGER_SECONDS = 2.0

_on_message_begin = HttpToolsProtocol.on_message_begin
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete


@functools.cache
def limits() -> tuple[int, int, int]:
    """(header timeout s, body timeout s, max header bytes), from the Django settings.

    Read at the first connection rather than at import: uvicorn imports this module before the
    app, and the app is what configures Django."""
    from django.conf import settings

    return (
        settings.RELAY_HEADER_TIMEOUT_SECONDS,
        settings.RELAY_BODY_TIMEOUT_SECONDS,
        settings.RELAY_MAX_HEADER_BYTES,
    )


class RelayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout, self.max_header_bytes = limits()
        self._phase = _IDLE
        # Bytes read while a request head is awaited, reset when one completes (counted per read:
        # the read that ends a head may carry body bytes too, but is then let through).
        self._head_bytes = 0
        # When the current head must be complete (loop time); None until its first byte.
        self._head_deadline: float | None = None
        self._last_body_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = _OPENED
        self._head_deadline = self.loop.time() + self.header_timeout
        self._arm(self._head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _IDLE
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection is the websocket protocol's from now on.
        self._phase = _IDLE
        self._disarm()
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._phase != _BODY:
            if self._phase == _LINGER:
                return
            room = self.max_header_bytes - self._head_bytes
            if len(data) > room:
                self._receive_past_head_room(data, room)
                return
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self._parse_stopped(exc):
                return
        phase = self._phase
        if phase == _BODY:
            self._last_body_read = now = self.loop.time()
            if self._timer is None or self._timer_when > now + self.body_timeout:
                self._arm(now + self.body_timeout)
        elif phase == _HEAD:
            if self._head_deadline is None:
                self._head_deadline = self.loop.time() + self.header_timeout
                self._arm(self._head_deadline)
        elif (
            self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and not self.transport.is_closing()
        ):
            # uvicorn cancels its keep-alive timer on every read, and arms it again only when a
            # response completes: bytes read after that (the rest of a body already answered,
            # blank lines between requests) would leave the connection open forever.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _receive_past_head_room(self, data: bytes, room: int) -> None:
        """`data` is more than the current head may still take: parse what it may, and the
        rest only if the head ended within it."""
        view = memoryview(data)
        self._head_bytes = self.max_header_bytes
        if not self._feed(view[:room]):
            return
        if self._head_bytes == self.max_header_bytes:  # not reset by on_headers_complete
            self._refuse(
                431,
                f"The request head exceeds the limit of {self.max_header_bytes} bytes.",
                "request_header_fields_too_large",
            )
            return
        self.data_received(view[room:])  # type: ignore[arg-type]  (httptools takes buffers)

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse `data`; False once the connection is no longer ours to read."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            return self._parse_stopped(exc)
        return True

    def _parse_stopped(self, exc: Exception) -> bool:
        """Handle what stopped the parser; False once the connection is no longer ours."""
        if not isinstance(exc, httptools.HttpParserUpgrade):
            self._refuse_malformed(exc)
            return False
        if self._should_upgrade():
            self.handle_websocket_upgrade()
            return False
        self._unsupported_upgrade_warning()
        return True

    # Parser callbacks (uvicorn's called directly: super() costs a little on every request)

    def on_message_begin(self) -> None:
        _on_message_begin(self)
        self._phase = _HEAD

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_bytes = 0
        _on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._head_deadline = None
        _on_message_complete(self)

    # Refusals

    def _refuse_malformed(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc, httptools.HttpParserCallbackError):
            # Raised by a callback of ours or uvicorn's, not by the parser: worth a look.
            logger.warning("HTTP request refused by a parser callback", exc_info=exc)
        reason = str(exc).rstrip(".")
        if isinstance(exc, httptools.HttpParserInvalidMethodError) and reason.startswith(
            "Invalid method"
        ):
            self._refuse(
                501, "The request's method is not implemented by this server.",
                "method_not_implemented",
            )  # fmt: skip
        else:
            self._refuse(400, f"Invalid HTTP request: {reason}.", "invalid_http_request")

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_when <= when:
                return  # it fires first, and re-arms for `when`
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase in (_IDLE, _LINGER) or self.transport.is_closing():
            return
        now = self.loop.time()
        if phase == _BODY:
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                # The wait is ours: the app has not read what came, or not asked for the body.
                self._last_body_read = now
            deadline = self._last_body_read + self.body_timeout
        else:
            deadline = self._head_deadline
            if deadline is None:
                return
        if now < deadline:
            self._arm(deadline)
        elif phase == _OPENED:
            # Nothing was asked: close as an idle keep-alive connection is closed, unanswered
            # (clients open connections ahead of need).
            self.transport.close()
        elif phase == _HEAD:
            self._refuse(
                408, f"The request head did not arrive within {self.header_timeout} seconds.",
                "request_timeout",
            )  # fmt: skip
        else:
            self._refuse(
                408, f"The request body stalled for {self.body_timeout} seconds.",
                "request_timeout",
            )  # fmt: skip

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer in the relay's error shape, then close; unless an answer now would be read
        as another request's: then close at once, or after the earlier response due first."""
        cycle = self.cycle
        in_body = self._phase == _BODY  # then the cycle is this request's, else an earlier one's
        self._disarm()
        self._phase = _LINGER  # nothing more is parsed
        if in_body:
            if cycle.response_started or self.pipeline:
                # Its response has begun, or it waits behind earlier requests' responses.
                self.transport.close()
                return
            # The app waits for this body: it now receives http.disconnect, its sends dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # the connection closes once that response is out
            return
        body = orjson.dumps(RelayError(status, message, code=code).body())
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.append(
            b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)
        )
        content.append(body)
        self.transport.write(b"".join(content))
        self._linger()

    def _linger(self) -> None:
        """Close once the client has had the answer. Closed at once with input unread (the
        rest of a huge head, a body after a bad one), the socket would send a reset, and a
        reset can destroy the answer still in flight; so the answer is followed by a FIN and
        what still comes is read and dropped, until the client closes or LINGER_SECONDS pass."""
        transport = self.transport
        if not transport.can_write_eof():  # TLS
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)
