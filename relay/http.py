"""ASGI plumbing of the relay: read a bounded body, answer JSON or OpenAI-style errors.

The relay is a small ASGI app rather than Django views: Django's handler reads the whole body
before any view runs (an oversized upload cannot be refused early) and hops to a thread for its
signals on every request, which the hot path cannot afford.
"""

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable

import orjson

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    501: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


class RelayError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ClientDisconnected(Exception):
    pass


# Unique without a system call per request: 64 random bits per process, then a counter.
_request_id_prefix = ""
_request_numbers = itertools.count()


def _new_request_id_prefix() -> None:
    global _request_id_prefix, _request_numbers
    _request_id_prefix = "req_" + os.urandom(8).hex()
    _request_numbers = itertools.count()


_new_request_id_prefix()
# A server that forks its workers after importing us must not give them the same ids.
os.register_at_fork(after_in_child=_new_request_id_prefix)


def new_request_id() -> str:
    return f"{_request_id_prefix}{next(_request_numbers):016x}"


class Request:
    __slots__ = (
        "app", "body", "error_body", "headers", "method", "out_headers", "path", "receive",
        "request_id", "scope", "send",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive, send: Send, app=None) -> None:
        # The RelayApp serving it: its spawn() runs the request's background work.
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # Header names arrive lower-cased in ASGI; the last value wins.
        self.headers: dict[str, str] = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.request_id = new_request_id()
        self.body = b""
        # Sent with whatever response goes out, success or error (the x-ratelimit-* headers).
        self.out_headers: dict[str, str] | None = None
        # The error body of an endpoint with its own error shape (Anthropic's /v1/messages).
        self.error_body: Callable[[RelayError], dict] | None = None

    @property
    def client_ip(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def read_body(self, limit: int) -> bytes:
        """Read the body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise RelayError(413, body_too_large_message(limit), code="request_too_large")
            except ValueError as exc:
                raise RelayError(400, "Invalid Content-Length header.") from exc
        chunks = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RelayError(413, body_too_large_message(limit), code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return self.body

    def json(self) -> dict:
        if not self.body:
            raise RelayError(400, "The request body is empty; send a JSON object.")
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise RelayError(
                400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
            ) from exc
        if not isinstance(data, dict):
            raise RelayError(400, "The request body must be a JSON object.", code="invalid_json")
        return data

    def _headers(self, content_type: bytes, extra: dict[str, str] | None) -> list:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        if self.out_headers:
            extra = {**self.out_headers, **(extra or {})}
        if extra:
            headers.extend(
                (k.encode("latin-1"), str(v).encode("latin-1")) for k, v in extra.items()
            )
        return headers

    async def respond_json(
        self,
        status: int,
        data: object,
        headers: dict[str, str] | None = None,
        *,
        more: bool = False,
    ) -> None:
        await self.respond_bytes(status, orjson.dumps(data), headers, more=more)

    async def respond_bytes(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        more: bool = False,
    ) -> None:
        """Answer with `body`; with `more`, the response stays open until end_stream()."""
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": self._headers(b"application/json", headers),
            }
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": more})

    async def respond_error(self, error: RelayError) -> None:
        body = error.body() if self.error_body is None else self.error_body(error)
        await self.respond_json(error.status, body, error.headers)

    async def start_stream(
        self,
        headers: dict[str, str] | None = None,
        content_type: bytes = b"text/event-stream; charset=utf-8",
    ) -> None:
        extra = {"cache-control": "no-cache", **(headers or {})}
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self._headers(content_type, extra),
            }
        )

    async def stream_chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def wait_for_disconnect(self) -> None:
        """Returns when the client hangs up (call only once the body has been read)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


def body_too_large_message(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes."


async def run_until_disconnect(request: Request, work: Awaitable) -> object:
    """Await `work`; if the client hangs up first, cancel it and raise ClientDisconnected.

    `work` runs in the calling task and one small task watches for the hang-up, rather than
    racing two tasks with asyncio.wait: this runs on every call, and that costs twice as much.
    """
    current = asyncio.current_task()
    finished = hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        await request.wait_for_disconnect()
        if not finished:
            hung_up = True
            current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not hung_up:
            raise
        current.uncancel()
        raise ClientDisconnected from None
    finally:
        # Set before the watcher can run again: a hang-up after the work cancels nothing.
        finished = True
        watcher.cancel()
