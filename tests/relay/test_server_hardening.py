"""The relay's HTTP protocol (relay/server.py) against hostile and broken clients, over raw
sockets to a real uvicorn process: malformed requests, HEAD, oversized heads, stalled clients."""

import asyncio
import functools
import json
import socket
import time
from dataclasses import dataclass

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from relay.server import RelayHttpProtocol
from tests.relay.conftest import RelayServer, chat, wait_for_logs

pytestmark = pytest.mark.django_db(transaction=True)

# Of the hardened relay below; every timing assertion allows for a slow machine.
TIMEOUT_SECONDS = 1
LATE = 3.0
MAX_HEADER_BYTES = 64 * 1024  # the default
ONE_MEGABYTE_HEAD = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"


@pytest.fixture(scope="module")
def hardened(relay_role, tmp_path_factory):
    """A relay with one-second header, body and keep-alive timeouts."""
    server = RelayServer(
        tmp_path_factory.mktemp("relay-hardened") / "relay.log",
        keep_alive_seconds=TIMEOUT_SECONDS,
        RELAY_CATALOG_CACHE_SECONDS="0",
        RELAY_HEADER_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        RELAY_BODY_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
    ).start()
    yield server
    server.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Connection:
    """A raw client connection; it reads through one buffer, so no byte read ahead is lost."""

    def __init__(self, server: RelayServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=LATE + 2)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, *, head: bool = False) -> Response:
        """The next response (Content-Length or chunked framing; none after HEAD)."""
        status = int(self.reader.readline().split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head:
            return Response(status, headers, b"")
        if "content-length" in headers:
            return Response(status, headers, self.reader.read(int(headers["content-length"])))
        body = b""
        while size := int(self.reader.readline(), 16):
            body += self.reader.read(size)
            self.reader.readline()
        self.reader.readline()
        return Response(status, headers, body)

    def rest(self) -> bytes:
        """Whatever the server sends until it closes the connection."""
        return self.reader.read()

    def rest_and_seconds(self, since: float) -> tuple[bytes, float]:
        """rest(), and the seconds from `since` to the close."""
        received = self.rest()
        return received, time.monotonic() - since


def exchange(server: RelayServer, raw: bytes, *, head: bool = False) -> tuple[Response, bytes]:
    """Send `raw`, read the answer and then the connection to its end: (answer, what followed)."""
    with Connection(server) as conn:
        conn.send(raw)
        return conn.response(head=head), conn.rest()


def error(message: str, code: str) -> dict:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


def assert_refused(response: Response, status: int, message: str, code: str) -> None:
    assert response.status == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.json() == error(message, code)


# Malformed requests


def test_a_content_length_that_is_not_a_number_is_a_400_in_the_relay_error_shape(relay):
    response, rest = exchange(
        relay, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
    )

    assert_refused(
        response, 400, "Invalid HTTP request: Invalid character in Content-Length.",
        "invalid_http_request",
    )  # fmt: skip
    assert rest == b""


def test_content_length_with_transfer_encoding_is_a_400_not_a_smuggled_request(relay):
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    response, rest = exchange(
        relay,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
    )

    assert_refused(
        response, 400,
        "Invalid HTTP request: Transfer-Encoding can't be present with Content-Length.",
        "invalid_http_request",
    )  # fmt: skip
    assert rest == b""  # the request behind it was not served


def test_invalid_chunking_is_a_400(relay):
    response, rest = exchange(
        relay,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
    )

    assert_refused(
        response, 400, "Invalid HTTP request: Invalid character in chunk size.",
        "invalid_http_request",
    )  # fmt: skip
    assert rest == b""


def test_a_request_line_without_a_target_is_a_400(relay):
    response, _ = exchange(relay, b"GET\r\n\r\n")

    assert_refused(
        response, 400, "Invalid HTTP request: Expected space after method.", "invalid_http_request"
    )


def test_an_unknown_method_is_a_501(relay):
    response, _ = exchange(relay, b"FROB /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")

    assert_refused(
        response, 501, "The request's method is not implemented by this server.",
        "method_not_implemented",
    )  # fmt: skip


def test_a_known_method_on_a_post_endpoint_is_a_405_naming_post(relay):
    response, _ = exchange(
        relay, b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    assert response.status == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == error("Use POST for /v1/chat/completions.", "method_not_allowed")


def test_pipelined_requests_are_answered_in_order(relay):
    with Connection(relay) as conn:
        conn.send(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
            b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        first, second, rest = conn.response(), conn.response(), conn.rest()

    assert (first.status, second.status, second.headers["allow"]) == (401, 405, "GET, HEAD")
    assert rest == b""


def test_a_malformed_request_behind_a_pipelined_one_ends_the_connection_after_its_answer(relay):
    with Connection(relay) as conn:
        conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nFROB / HTTP/1.1\r\n\r\n")
        first, rest = conn.response(), conn.rest()

    assert first.json()["error"]["code"] == "missing_api_key"
    assert rest == b""  # no answer that could be taken for the first request's


# HEAD


def test_head_of_the_model_list_answers_as_get_without_a_body(relay, make_account):
    account = make_account()
    auth = f"Authorization: Bearer {account.key}\r\n".encode()

    with Connection(relay) as conn:
        conn.send(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        head = conn.response(head=True)
        # The next bytes are the next response: the HEAD answer carried no body.
        conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        get = conn.response()

    assert (head.status, head.headers["content-type"]) == (200, "application/json")
    assert get.status == 200
    assert [model["id"] for model in get.json()["data"]] == ["gpt-test"]


def test_head_of_a_model_answers_as_get_without_a_body(relay, make_account):
    account = make_account()
    auth = f"Authorization: Bearer {account.key}\r\n".encode()

    with Connection(relay) as conn:
        conn.send(b"HEAD /v1/models/gpt-test HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        head = conn.response(head=True)
        conn.send(b"HEAD /v1/models/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        conn.send(auth + b"\r\n")
        missing = conn.response(head=True)
        rest = conn.rest()

    assert (head.status, missing.status, rest) == (200, 404, b"")


def test_head_of_chat_completions_is_a_405_with_allow_post_and_no_body(relay):
    response, rest = exchange(
        relay,
        b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        head=True,
    )

    assert (response.status, response.headers["allow"]) == (405, "POST")
    assert (response.body, rest) == (b"", b"")


# Oversized heads


def test_a_one_megabyte_header_is_a_431_that_reaches_the_client(relay):
    with Connection(relay) as conn:
        # All of it sent before reading: the relay drops what comes after its answer rather
        # than resetting the connection, which could destroy the answer in flight.
        conn.send(ONE_MEGABYTE_HEAD)
        response = conn.response()
        rest = conn.rest()

    assert_refused(
        response, 431, f"The request head exceeds the limit of {MAX_HEADER_BYTES} bytes.",
        "request_header_fields_too_large",
    )  # fmt: skip
    assert rest == b""


def test_a_head_just_under_the_limit_is_served(relay):
    filler = b"a" * (MAX_HEADER_BYTES - 200)
    response, _ = exchange(
        relay,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Filler: " + filler + b"\r\n"
        b"Connection: close\r\n\r\n",
    )

    assert response.status == 401  # through to the app, which wants a key


# Stalled clients


def test_a_connection_that_sends_nothing_is_closed_unanswered_after_the_header_timeout(
    hardened,
):
    started = time.monotonic()
    with Connection(hardened) as conn:
        received, elapsed = conn.rest_and_seconds(started)

    assert received == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_a_half_sent_request_head_is_a_408_after_the_header_timeout(hardened):
    started = time.monotonic()
    with Connection(hardened) as conn:
        conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        response = conn.response()
        rest, elapsed = conn.rest_and_seconds(started)

    assert_refused(
        response, 408, f"The request head did not arrive within {TIMEOUT_SECONDS} seconds.",
        "request_timeout",
    )  # fmt: skip
    assert rest == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_a_head_trickling_in_is_timed_out_from_its_first_byte(hardened):
    started = time.monotonic()
    with Connection(hardened) as conn:
        for line in (b"GET /v1/models HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
            conn.send(line)
            time.sleep(0.4)
        response = conn.response()
        _, elapsed = conn.rest_and_seconds(started)

    assert response.status == 408
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_a_stalled_body_is_a_408_after_the_body_timeout(hardened, make_account):
    account = make_account()
    with Connection(hardened) as conn:
        conn.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {account.key}\r\n\r\n".encode()
            + b'{"model": "gpt-test"'
        )
        started = time.monotonic()
        response = conn.response()
        rest, elapsed = conn.rest_and_seconds(started)

    assert_refused(
        response, 408, f"The request body stalled for {TIMEOUT_SECONDS} seconds.",
        "request_timeout",
    )  # fmt: skip
    assert rest == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE
    assert account.logs().count() == 0


def test_a_stalled_chunked_body_is_a_408_after_the_body_timeout(hardened, make_account):
    account = make_account()
    with Connection(hardened) as conn:
        conn.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {account.key}\r\n\r\n".encode()
            + b'14\r\n{"model": "gpt-test"\r\n'
        )
        started = time.monotonic()
        response = conn.response()
        rest, elapsed = conn.rest_and_seconds(started)

    assert response.status == 408
    assert rest == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_a_body_arriving_slowly_but_steadily_is_served(hardened, make_account):
    account = make_account()
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]})
    step = -(-len(body) // 5)
    with Connection(hardened) as conn:
        conn.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\nAuthorization: Bearer {account.key}\r\n\r\n".encode()
        )
        started = time.monotonic()
        for start in range(0, len(body), step):  # in five pieces, half a timeout apart
            time.sleep(TIMEOUT_SECONDS * 0.5)
            conn.send(body[start : start + step].encode())
        response = conn.response()

    assert time.monotonic() - started > TIMEOUT_SECONDS * 2
    assert response.status == 200
    assert response.json()["usage"]["completion_tokens"] == 16


def test_a_body_stalled_after_an_early_answer_is_closed_without_a_second_answer(hardened):
    with Connection(hardened) as conn:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        response = conn.response()  # no key: refused before the body is read
        rest, elapsed = conn.rest_and_seconds(started)

    assert response.json()["error"]["code"] == "missing_api_key"
    assert rest == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(hardened):
    with Connection(hardened) as conn:
        conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        response = conn.response()
        started = time.monotonic()
        rest, elapsed = conn.rest_and_seconds(started)

    assert response.status == 401
    assert rest == b""
    assert TIMEOUT_SECONDS * 0.8 < elapsed < LATE


def test_a_keep_alive_connection_serves_requests_longer_apart_than_the_header_timeout(hardened):
    with Connection(hardened) as conn:
        statuses = []
        for _ in range(3):
            conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            statuses.append(conn.response().status)
            time.sleep(TIMEOUT_SECONDS * 0.7)

    assert statuses == [401, 401, 401]


# Normal traffic


def test_a_stream_longer_than_every_timeout_is_delivered_whole(hardened, make_account, mock):
    account = make_account()
    plain = chat(account).choices[0].message.content
    mock.chunk_delay_ms = 150  # 16 chunks: about 2.4 s, over the one-second timeouts

    started = time.monotonic()
    chunks = list(
        hardened.client(account.key).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hello there"}], stream=True
        )
    )

    assert time.monotonic() - started > TIMEOUT_SECONDS * 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    logs = wait_for_logs(account, 2)
    assert [(log.is_stream, log.completion_tokens) for log in logs] == [(False, 16), (True, 16)]


# In process: what the parser was fed, and waits that are the app's


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.eof_written = self.closed = False

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class RecordingParser:
    """httptools' parser, recording how many bytes it was fed each time."""

    def __init__(self, parser) -> None:
        self.parser = parser
        self.fed: list[int] = []

    def feed_data(self, data) -> None:
        self.fed.append(len(data))
        self.parser.feed_data(data)

    def __getattr__(self, name: str):
        return getattr(self.parser, name)


def in_process(
    app, *, body_timeout: float | None = None
) -> tuple[RelayHttpProtocol, FakeTransport]:
    """The relay's protocol in this process (inside a running loop), on a fake connection."""
    config = Config(app=app, interface="asgi3", lifespan="off", log_config=None, access_log=False)
    config.load()
    protocol = RelayHttpProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    if body_timeout is not None:
        protocol.body_timeout = body_timeout
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def until(predicate, timeout: float = LATE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def echo_after(seconds: float, scope, receive, send) -> None:
    """An app that answers with the request body, `seconds` after it is called."""
    await asyncio.sleep(seconds)
    body = b""
    while (message := await receive())["type"] == "http.request":
        body += message["body"]
        if not message["more_body"]:
            break
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_a_head_over_the_limit_is_parsed_no_further_than_the_limit():
    async def run() -> tuple[list[int], FakeTransport]:
        protocol, transport = in_process(functools.partial(echo_after, 0))
        protocol.parser = recording = RecordingParser(protocol.parser)
        for start in range(0, len(ONE_MEGABYTE_HEAD), 16384):
            protocol.data_received(ONE_MEGABYTE_HEAD[start : start + 16384])
        return recording.fed, transport

    fed, transport = asyncio.run(run())

    assert sum(fed) == MAX_HEADER_BYTES
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    # Answered, then lingering: FIN sent, the connection left open to drain.
    assert (transport.eof_written, transport.closed) == (True, False)


def test_a_body_the_app_has_not_asked_for_yet_is_not_timed_out():
    async def run() -> bytes:
        # The client waits for 100 Continue, which goes out when the app first reads: later
        # than the body timeout.
        protocol, transport = in_process(functools.partial(echo_after, 0.5), body_timeout=0.2)
        protocol.data_received(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        await until(lambda: b"100 Continue" in transport.written)
        protocol.data_received(b"hi")
        await until(lambda: transport.written.endswith(b"hi"))
        return transport.written

    assert asyncio.run(run()) == (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
    )


def test_a_stalled_pipelined_body_is_answered_after_the_response_before_it():
    async def run() -> bytes:
        protocol, transport = in_process(functools.partial(echo_after, 0.5), body_timeout=0.2)
        protocol.data_received(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nstal"
        )
        await until(lambda: transport.eof_written)
        return transport.written

    first, second = asyncio.run(run()).split(b"\r\n\r\nok", 1)
    assert first == b"HTTP/1.1 200 OK\r\ncontent-length: 2"
    assert second.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
