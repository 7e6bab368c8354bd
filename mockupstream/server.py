"""Mock LLM upstream: a small, fast HTTP/1.1 server that speaks the OpenAI, Anthropic and Gemini
wire formats, for the test suite, the offline demo channel and the load benchmark.

It is an asyncio protocol on top of the `httptools` parser (uvloop when installed) rather than a
framework: about 25,000 non-streaming requests per CPU-second, so the mock is never the
bottleneck of a benchmark. It does not import Django, so it also runs on its own:

    python -m mockupstream.server --port 8001 [--host H] [--latency-ms N] [--chunk-delay-ms N]

Replies are deterministic: "This is a mock reply to: <first words of the last user message>",
padded with filler words to the requested length, one word per stream chunk and per completion
token. Prompt tokens are ceil(characters of all message text / 4), at least 1.

Request headers steer it per call:
    x-mock-chunks: N          completion length in words/chunks (default 16)
    x-mock-latency-ms: N      delay before the response headers (overrides the server's)
    x-mock-chunk-delay-ms: N  delay between stream events (overrides the server's; with 0 a
                              stream goes out in one write)
    x-mock-fault: NAME        one of FAULTS; a model named `mock-fault-NAME` does the same
An API key that is exactly `invalid` gets 401; any other key (or none) is accepted.

OpenAI's media endpoints too: images/generations and images/edits (an 8x8 PNG as b64_json, or
a url served here at /_mock/media/<id>.png), audio/speech (a WAV, 20 ms per input character,
streamed in chunks), audio/transcriptions and audio/translations ("Mock transcript of N
bytes.", the duration from a WAV header or 1 s per 16 kB, every response format) and
moderations (flags "kill", "hate", "hurt myself"); multipart bodies are read with the
standard library's email parser.
OpenAI's Responses API (POST /v1/responses) answers plain or streamed, with its events and usage.
An Anthropic Messages body with a `cache_control` breakpoint (on the body, a tool, a system or a
content block) reports half of its prompt tokens not read from the cache as written to it
(cache_creation_input_tokens); the `cached` fault reports half of the prompt as read from it.

Test hooks: GET /_mock/stats, POST /_mock/reset, GET /_mock/last (the last provider request's
method, path, query, headers and JSON body), or the same through `MockUpstream` in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import email.parser
import email.policy
import functools
import hashlib
import io
import logging
import math
import os
import re
import signal
import struct
import time
import wave
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import httptools

from tokenbyte.loopthread import LoopThread

try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is pinned; this keeps standalone use light
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    _loads = json.loads

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional, plain asyncio is only slower
    uvloop = None

logger = logging.getLogger(__name__)

FAULTS = frozenset(
    {
        "500",
        "429",
        "timeout",
        "malformed",
        "drop",
        "stream-error",
        "early-stream-error",
        "no-usage",
        "cached",
    }
)
FAULT_MODEL_PREFIX = "mock-fault-"
DEFAULT_CHUNKS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8
TOOL_CALL_TOKENS = 2  # a tool call streams as two deltas: the name, then the arguments
TIMEOUT_FAULT_SECONDS = 60.0
DROP_AFTER_CONTENT_CHUNKS = 2
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_PIPELINED = 32  # requests queued on one connection before we stop reading from it
MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "claude-3-5-haiku-latest",
    "gemini-2.0-flash",
)
MODEL_CREATED = 1_715_367_049  # fixed so /v1/models is byte-for-byte deterministic

_PREFIX_WORDS = ("This", "is", "a", "mock", "reply", "to:")
_PROMPT_WORDS = 8
_WORD_CHARS = 40
_FILLER_WORDS = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
)
_NOT_JSON = object()
_MALFORMED_BODY = b'{"id": "mock-malformed", "choices": [{"message": '
_MEDIA_URL = re.compile(r"^/_mock/media/[A-Za-z0-9-]+\.png$")
_GEMINI_PATH = re.compile(r"^/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)$")

_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {reason}\r\n".encode()
    for status, reason in (
        (100, "Continue"),
        (200, "OK"),
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (413, "Payload Too Large"),
        (429, "Too Many Requests"),
        (500, "Internal Server Error"),
    )
}
_OPENAI_ERROR_TYPES = {429: "requests", 500: "server_error"}
_ANTHROPIC_ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
}
_GEMINI_STATUSES = {
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
}
_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"


# --------------------------------------------------------------------------------------------
# Requests, replies, statistics


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    too_large: bool = False


@dataclass(slots=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()
    events: list[bytes] | None = None  # a stream: each item is one framed event (one HTTP chunk)
    drop_after: int | None = None  # stream: close abruptly after this many events
    hang: bool = False  # `timeout` fault: say nothing
    close_without_reply: bool = False  # `drop` fault on a non-stream call
    latency_ms: int = 0
    chunk_delay_ms: int = 0


class Stats:
    """Counters of one server. Written only on its event loop; read through `snapshot()`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.requests_cancelled = 0  # client left before any response byte
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_cancelled = 0  # client left mid-stream
        self.streams_dropped = 0  # the `drop` fault cut it
        self.stream_events_sent = 0
        self.by_path: dict[str, int] = {}
        self.by_fault: dict[str, int] = {}
        self.last: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_cancelled": self.requests_cancelled,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
            "streams_dropped": self.streams_dropped,
            "stream_events_sent": self.stream_events_sent,
            "by_path": dict(self.by_path),
            "by_fault": dict(self.by_fault),
        }


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


# --------------------------------------------------------------------------------------------
# Helpers shared by the three wire formats


def _sse(payload: Any) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


def _anthropic_event(name: bytes, payload: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + _dumps(payload) + b"\n\n"


def _collect_text(content: Any, out: list[str]) -> None:
    """Gather the text of a message content in any provider's shape (string or parts)."""
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                if "content" in part:  # Anthropic tool_result blocks nest their content
                    _collect_text(part["content"], out)


def _count_tokens(texts: list[str], extra_tokens: int = 0) -> int:
    chars = sum(len(text) for text in texts)
    return max(1, -(-chars // 4) + extra_tokens)


def _head(text: str) -> str:
    """The first words of a prompt, which are all the reply quotes; a giant "word" (a 5 MB test
    body without spaces) is cut so the reply stays small."""
    return " ".join(word[:_WORD_CHARS] for word in text.split(None, _PROMPT_WORDS)[:_PROMPT_WORDS])


@functools.lru_cache(maxsize=1024)  # benchmarks send the same prompt again and again
def _reply_pieces(prompt_head: str, count: int) -> tuple[str, ...]:
    """`count` words of the deterministic reply, each but the first with its leading space."""
    words = [*_PREFIX_WORDS, *prompt_head.split()]
    filler = 0
    while len(words) < count:
        words.append(_FILLER_WORDS[filler % len(_FILLER_WORDS)])
        filler += 1
    words = words[:count]
    return tuple(word if index == 0 else " " + word for index, word in enumerate(words))


def _int_field(body: dict[str, Any], *names: str, default: int | None, low: int, high: int) -> Any:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _BadRequest(f"'{name}' must be an integer between {low} and {high}", name)
        return value
    return default


def _header_int(headers: dict[str, str], name: str, default: int, high: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"header {name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= high:
        raise _BadRequest(f"header {name} must be between 0 and {high}, got {value}")
    return value


def _api_key(request: Request) -> str | None:
    headers = request.headers
    auth = headers.get("authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or request.query.get("key")


def _openai_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _error_reply(family: str, status: int, message: str, param: str | None = None) -> Reply:
    if family == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error")
        payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    elif family == "gemini":
        code = _GEMINI_STATUSES.get(status, "INVALID_ARGUMENT")
        payload = {"error": {"code": status, "message": message, "status": code}}
    else:
        code_name = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        kind = _OPENAI_ERROR_TYPES.get(status, "invalid_request_error")
        payload = {"error": {"message": message, "type": kind, "param": param, "code": code_name}}
    headers = ((b"retry-after", b"1"),) if status == 429 else ()
    return Reply(status=status, body=_dumps(payload), headers=headers)


def _embedding(text: str, dimensions: int) -> list[float]:
    # Multiples of 1/128 are exact in float32, so the SDK's default base64 encoding round-trips.
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    return [(byte - 128) / 128 for byte in digest]


@dataclass(slots=True)
class _Call:
    """One provider call after the common checks: parsed body and the per-call knobs."""

    body: dict[str, Any]
    model: str
    fault: str | None
    chunks: int
    seq: int
    stream_format: str = "sse"  # Gemini also streams a plain JSON array without ?alt=sse
    # A multipart upload's files: (field, filename, content type, bytes).
    files: list[tuple[str, str, str, bytes]] | None = None

    @property
    def usage_hidden(self) -> bool:
        return self.fault == "no-usage"

    def cached_of(self, prompt_tokens: int) -> int:
        return prompt_tokens // 2 if self.fault == "cached" else 0


# What a provider sends when it fails in a stream (`stream-error` after some content,
# `early-stream-error` before any): an error event, then the end.
STREAM_ERROR = {"message": "Overloaded (mock fault stream-error).", "type": "overloaded_error"}


def _stream_reply(
    call: _Call, events: list[bytes], content_type: bytes, drop_at: int, error: bytes = b""
) -> Reply:
    if call.fault == "stream-error":
        events = [*events[: min(drop_at, len(events) - 1)], error]
    elif call.fault == "early-stream-error":
        events = [error]  # failing before any content: a relay can still try another channel
    reply = Reply(content_type=content_type, events=events)
    if call.fault == "drop":
        reply.drop_after = min(drop_at, len(events) - 1)
    return reply


def _malformed_event(events: list[bytes], bad: bytes) -> None:
    # After the first event, so a client has already committed to the stream when it breaks.
    events.insert(1, bad)


# --------------------------------------------------------------------------------------------
# OpenAI


def _openai_tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") or choice.get("name")
        if isinstance(named, str) and named:
            return named
    first = tools[0] if isinstance(tools[0], dict) else {}
    function = first.get("function") if isinstance(first.get("function"), dict) else first
    name = function.get("name")
    return name if isinstance(name, str) and name else "tool"


def _chat_completions(call: _Call) -> Reply:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    n = _int_field(body, "n", default=1, low=1, high=128)
    cap = _int_field(
        body, "max_completion_tokens", "max_tokens", default=None, low=1, high=10_000_000
    )
    texts: list[str] = []
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("each message must be an object", "messages")
        before = len(texts)
        _collect_text(message.get("content"), texts)
        if message.get("role") == "user":
            last_user = " ".join(texts[before:])
    prompt_tokens = _count_tokens(texts)
    tool = _openai_tool_name(body)
    count = call.chunks if cap is None else min(call.chunks, cap)
    finish = "length" if cap is not None and cap < call.chunks else "stop"
    pieces = _reply_pieces(_head(last_user), count)
    if tool is not None:
        finish = "tool_calls"
        count = TOOL_CALL_TOKENS
    usage = _openai_usage(prompt_tokens, count * n, call.cached_of(prompt_tokens))
    cid = f"chatcmpl-mock{call.seq:010d}"
    created = int(time.time())

    if not body.get("stream"):
        choices = []
        for index in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
            if tool is not None:
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": f"call_mock{index}",
                        "type": "function",
                        "function": {"name": tool, "arguments": "{}"},
                    }
                ]
            message["refusal"] = None
            message["annotations"] = []
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
            )
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": choices,
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
        if call.usage_hidden:
            del payload["usage"]
        return Reply(body=_dumps(payload))

    options = body.get("stream_options")
    include_usage = (
        isinstance(options, dict) and options.get("include_usage") is True and not call.usage_hidden
    )
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model,
        "system_fingerprint": "fp_mock",
    }

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload = {**base, "choices": [choice]}
        if include_usage:
            payload["usage"] = None  # as OpenAI does on every chunk but the last one
        return _sse(payload)

    events = [
        chunk(i, {"role": "assistant", "content": "" if tool is None else None, "refusal": None})
        for i in range(n)
    ]
    if tool is not None:
        for i in range(n):
            call_id = f"call_mock{i}"
            function = {"name": tool, "arguments": ""}
            first = {"index": 0, "id": call_id, "type": "function", "function": function}
            events.append(chunk(i, {"tool_calls": [first]}))
            events.append(chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    else:
        for piece in pieces:
            events.extend(chunk(i, {"content": piece}) for i in range(n))
    events.extend(chunk(i, {}, finish) for i in range(n))
    if include_usage:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    if call.fault == "malformed":
        _malformed_event(events, b'data: {"id": "mock-malformed", "choices": [\n\n')
    error = _sse({"error": {**STREAM_ERROR, "param": None, "code": "overloaded"}})
    return _stream_reply(call, events, _SSE, n + DROP_AFTER_CONTENT_CHUNKS * n, error)


def _completions(call: _Call) -> Reply:
    body = call.body
    prompt = body.get("prompt")
    prompts: list[Any]
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt)
    ):
        prompts = [prompt]  # one text, or one prompt given as token ids
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        prompts = prompt
    else:
        raise _BadRequest(
            "'prompt' must be a string, an array of strings or token arrays", "prompt"
        )
    n = _int_field(body, "n", default=1, low=1, high=128)
    cap = _int_field(body, "max_tokens", default=None, low=1, high=10_000_000)
    texts = [p for p in prompts if isinstance(p, str)]
    token_ids = sum(len(p) for p in prompts if isinstance(p, list))
    prompt_tokens = _count_tokens(texts, token_ids)
    count = call.chunks if cap is None else min(call.chunks, cap)
    finish = "length" if cap is not None and cap < call.chunks else "stop"
    choice_pieces = [
        _reply_pieces(_head(p) if isinstance(p, str) else "", count)
        for p in prompts
        for _ in range(n)
    ]
    usage = _openai_usage(prompt_tokens, count * len(choice_pieces), call.cached_of(prompt_tokens))
    cid = f"cmpl-mock{call.seq:010d}"
    created = int(time.time())
    base = {"id": cid, "object": "text_completion", "created": created, "model": call.model}

    if not body.get("stream"):
        choices = [
            {"text": "".join(pieces), "index": i, "logprobs": None, "finish_reason": finish}
            for i, pieces in enumerate(choice_pieces)
        ]
        payload = {**base, "choices": choices, "usage": usage}
        if call.usage_hidden:
            del payload["usage"]
        return Reply(body=_dumps(payload))

    options = body.get("stream_options")
    include_usage = (
        isinstance(options, dict) and options.get("include_usage") is True and not call.usage_hidden
    )

    def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        payload = {**base, "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return _sse(payload)

    events = []
    for position in range(count):
        events.extend(chunk(i, pieces[position]) for i, pieces in enumerate(choice_pieces))
    events.extend(chunk(i, "", finish) for i in range(len(choice_pieces)))
    if include_usage:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    if call.fault == "malformed":
        _malformed_event(events, b'data: {"id": "mock-malformed", "choices": [\n\n')
    error = _sse({"error": {**STREAM_ERROR, "param": None, "code": "overloaded"}})
    return _stream_reply(call, events, _SSE, DROP_AFTER_CONTENT_CHUNKS * len(choice_pieces), error)


def _embeddings(call: _Call) -> Reply:
    body = call.body
    raw = body.get("input")
    inputs: list[Any]
    if (isinstance(raw, str) and raw) or (
        isinstance(raw, list) and raw and all(isinstance(item, int) for item in raw)
    ):
        inputs = [raw]  # one text, or one input given as token ids
    elif isinstance(raw, list) and raw and all(isinstance(item, str | list) for item in raw):
        inputs = raw
    else:
        raise _BadRequest("'input' must be a non-empty string or array", "input")
    dimensions = _int_field(
        body, "dimensions", default=DEFAULT_EMBEDDING_DIMENSIONS, low=1, high=16_384
    )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else ",".join(str(token) for token in item)
        vector: Any = _embedding(text, dimensions)
        if encoding == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    texts = [item for item in inputs if isinstance(item, str)]
    prompt_tokens = _count_tokens(
        texts, sum(len(item) for item in inputs if isinstance(item, list))
    )
    payload: dict[str, Any] = {"object": "list", "data": data, "model": call.model}
    if not call.usage_hidden:
        payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return Reply(body=_dumps(payload))


def _model_card(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": "tokenbyte-mock",
    }


_MODEL_LIST = _dumps({"object": "list", "data": [_model_card(m) for m in MODELS]})


# --------------------------------------------------------------------------------------------
# Anthropic Messages


def _anthropic_tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice") or {"type": "auto"}
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            return None
        if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            return choice["name"]
    first = tools[0] if isinstance(tools[0], dict) else {}
    return first.get("name") if isinstance(first.get("name"), str) else "tool"


def _asks_for_cache(body: dict[str, Any]) -> bool:
    """Whether a Messages body has a cache_control breakpoint (on the body, a tool, a system
    block or a content block)."""
    if "cache_control" in body:
        return True
    blocks: list[Any] = list(body.get("tools") or [])
    if isinstance(body.get("system"), list):
        blocks.extend(body["system"])
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            blocks.extend(message["content"])
    return any(isinstance(block, dict) and "cache_control" in block for block in blocks)


def _anthropic_messages(call: _Call) -> Reply:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: field required")
    # Anthropic requires max_tokens; so does the mock, to catch a relay that forgets to inject it.
    if "max_tokens" not in body:
        raise _BadRequest("max_tokens: Field required")
    cap = _int_field(body, "max_tokens", default=None, low=1, high=10_000_000)
    texts: list[str] = []
    _collect_text(body.get("system"), texts)
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("messages: each message must be an object")
        before = len(texts)
        _collect_text(message.get("content"), texts)
        if message.get("role") == "user":
            last_user = " ".join(texts[before:])
    prompt_tokens = _count_tokens(texts)
    cached = call.cached_of(prompt_tokens)
    # A cache_control breakpoint writes half of what was not read from the cache.
    written = (prompt_tokens - cached) // 2 if _asks_for_cache(body) else 0
    tool = _anthropic_tool_name(body)
    count = min(call.chunks, cap)
    stop_reason = "max_tokens" if cap < call.chunks else "end_turn"
    pieces = _reply_pieces(_head(last_user), count)
    if tool is not None:
        stop_reason = "tool_use"
        count = TOOL_CALL_TOKENS
    # Anthropic's input_tokens leaves out what was read from the cache; the total is their sum.
    usage = {
        "input_tokens": prompt_tokens - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": count,
    }
    mid = f"msg_mock{call.seq:010d}"
    tool_id = f"toolu_mock{call.seq:010d}"

    if not body.get("stream"):
        if tool is not None:
            content = [{"type": "tool_use", "id": tool_id, "name": tool, "input": {}}]
        else:
            content = [{"type": "text", "text": "".join(pieces)}]
        payload: dict[str, Any] = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if call.usage_hidden:
            del payload["usage"]
        return Reply(body=_dumps(payload))

    message = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    delta_usage = dict(usage)
    if call.usage_hidden:
        del message["usage"]
    events = [_anthropic_event(b"message_start", {"type": "message_start", "message": message})]
    if tool is not None:
        block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": tool, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": "{}"}]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
    events.append(
        _anthropic_event(
            b"content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
    )
    events.append(_anthropic_event(b"ping", {"type": "ping"}))
    events.extend(
        _anthropic_event(
            b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
        for delta in deltas
    )
    events.append(
        _anthropic_event(b"content_block_stop", {"type": "content_block_stop", "index": 0})
    )
    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": delta_usage,
    }
    if call.usage_hidden:
        del message_delta["usage"]
    events.append(_anthropic_event(b"message_delta", message_delta))
    events.append(_anthropic_event(b"message_stop", {"type": "message_stop"}))
    if call.fault == "malformed":
        _malformed_event(events, b'event: content_block_delta\ndata: {"type": "content_bl\n\n')
    error = _anthropic_event(b"error", {"type": "error", "error": STREAM_ERROR})
    return _stream_reply(call, events, _SSE, 3 + DROP_AFTER_CONTENT_CHUNKS, error)


# --------------------------------------------------------------------------------------------
# OpenAI Responses


def _responses_tool_name(body: dict[str, Any]) -> str | None:
    tools = [
        t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"
    ]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return choice["name"]
    name = tools[0].get("name")
    return name if isinstance(name, str) and name else "tool"


def _responses(call: _Call) -> Reply:
    body = call.body
    given = body.get("input")
    if not isinstance(given, str | list) or not given:
        raise _BadRequest("Missing required parameter: 'input'.", "input")
    cap = _int_field(body, "max_output_tokens", default=None, low=1, high=10_000_000)
    texts: list[str] = []
    _collect_text(body.get("instructions"), texts)
    last_user = given if isinstance(given, str) else ""
    if isinstance(given, str):
        texts.append(given)
    for item in given if isinstance(given, list) else []:
        if not isinstance(item, dict):
            raise _BadRequest("each input item must be an object", "input")
        before = len(texts)
        _collect_text(item.get("content"), texts)
        if isinstance(item.get("output"), str):  # a function_call_output item
            texts.append(item["output"])
        if item.get("role") == "user":
            last_user = " ".join(texts[before:])
    prompt_tokens = _count_tokens(texts)
    tool = _responses_tool_name(body)
    count = call.chunks if cap is None else min(call.chunks, cap)
    incomplete = cap is not None and cap < call.chunks and tool is None
    pieces = _reply_pieces(_head(last_user), count)
    if tool is not None:
        count = TOOL_CALL_TOKENS
    usage = {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": call.cached_of(prompt_tokens)},
        "output_tokens": count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + count,
    }
    seq = f"{call.seq:010d}"
    if tool is not None:
        item: dict[str, Any] = {
            "id": f"fc_mock{seq}", "type": "function_call", "status": "completed",
            "call_id": f"call_mock{seq}", "name": tool, "arguments": "{}",
        }  # fmt: skip
    else:
        part = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
        item = {
            "id": f"msg_mock{seq}", "type": "message", "status": "completed",
            "role": "assistant", "content": [part],
        }  # fmt: skip
    response: dict[str, Any] = {
        "id": f"resp_mock{seq}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": cap,
        "model": call.model,
        "output": [item],
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "usage": None if call.usage_hidden else usage,
    }
    if not body.get("stream"):
        return Reply(body=_dumps(response))

    events: list[bytes] = []

    def event(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(_anthropic_event(kind.encode(), payload))

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    event("response.created", response=started)
    event("response.in_progress", response=started)
    where = {"item_id": item["id"], "output_index": 0}
    if tool is not None:
        event("response.output_item.added", output_index=0, item={**item, "arguments": ""})
        event("response.function_call_arguments.delta", **where, delta="{}")
        event("response.function_call_arguments.done", **where, arguments="{}")
    else:
        empty = {**item, "status": "in_progress", "content": []}
        event("response.output_item.added", output_index=0, item=empty)
        blank = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        event("response.content_part.added", **where, content_index=0, part=blank)
        for piece in pieces:
            event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
        text = "".join(pieces)
        event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        event("response.content_part.done", **where, content_index=0, part=item["content"][0])
    event("response.output_item.done", output_index=0, item=item)
    event(f"response.{response['status']}", response=response)
    if call.fault == "malformed":
        _malformed_event(events, b'event: response.output_text.delta\ndata: {"type": "resp\n\n')
    error = _anthropic_event(b"error", {
        "type": "error", "code": "server_error", "message": STREAM_ERROR["message"],
        "param": None, "sequence_number": len(events),
    })  # fmt: skip
    return _stream_reply(call, events, _SSE, 4 + DROP_AFTER_CONTENT_CHUNKS, error)


# --------------------------------------------------------------------------------------------
# Gemini


def _gemini_tool_name(body: dict[str, Any]) -> str | None:
    config = body.get("toolConfig") or body.get("tool_config") or {}
    calling = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
    if calling.get("mode") == "NONE":
        return None
    allowed = calling.get("allowedFunctionNames") or calling.get("allowed_function_names")
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            declarations = tool.get("functionDeclarations") or tool.get("function_declarations")
            names.extend(d["name"] for d in declarations or [] if isinstance(d.get("name"), str))
    if not names:
        return None
    if isinstance(allowed, list) and allowed and isinstance(allowed[0], str):
        return allowed[0]
    return names[0]


def _gemini_generate(call: _Call, stream: bool) -> Reply:
    body = call.body
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = body.get("generationConfig") or body.get("generation_config") or {}
    if not isinstance(config, dict):
        raise _BadRequest("generationConfig must be an object")
    cap = _int_field(
        config, "maxOutputTokens", "max_output_tokens", default=None, low=1, high=10_000_000
    )
    n = _int_field(config, "candidateCount", "candidate_count", default=1, low=1, high=8)
    texts: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        _collect_text(system.get("parts"), texts)
    last_user = ""
    for content in contents:
        if not isinstance(content, dict):
            raise _BadRequest("* GenerateContentRequest.contents: each content must be an object")
        before = len(texts)
        _collect_text(content.get("parts"), texts)
        if content.get("role", "user") == "user":
            last_user = " ".join(texts[before:])
    prompt_tokens = _count_tokens(texts)
    cached = call.cached_of(prompt_tokens)
    tool = _gemini_tool_name(body)
    count = call.chunks if cap is None else min(call.chunks, cap)
    finish = "MAX_TOKENS" if cap is not None and cap < call.chunks else "STOP"
    pieces = _reply_pieces(_head(last_user), count)
    if tool is not None:
        finish = "STOP"
        count = TOOL_CALL_TOKENS
    response_id = f"mock{call.seq:010d}"

    def usage_of(produced: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": produced,
            "totalTokenCount": prompt_tokens + produced,
        }
        if cached:  # Gemini leaves the field out when nothing came from the cache
            usage["cachedContentTokenCount"] = cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        return usage

    def response(parts: list[dict[str, Any]], produced: int, finish_reason: str | None) -> bytes:
        candidates = []
        for index in range(n):
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if finish_reason is not None:
                candidate["finishReason"] = finish_reason
            candidate["index"] = index
            candidates.append(candidate)
        payload: dict[str, Any] = {"candidates": candidates}
        if not call.usage_hidden:
            payload["usageMetadata"] = usage_of(produced)
        payload["modelVersion"] = call.model
        payload["responseId"] = response_id
        return _dumps(payload)

    tool_parts = [{"functionCall": {"name": tool, "args": {}}}] if tool is not None else None
    if not stream:
        parts = tool_parts or [{"text": "".join(pieces)}]
        return Reply(body=response(parts, count * n, finish))

    if tool_parts is not None:
        bodies = [response(tool_parts, count * n, finish)]
    else:
        last = len(pieces) - 1
        bodies = [
            response([{"text": piece}], (i + 1) * n, finish if i == last else None)
            for i, piece in enumerate(pieces)
        ]
        if not bodies:
            bodies = [response([{"text": ""}], 0, finish)]
    if call.stream_format == "sse":
        # Gemini frames its events with CRLF pairs, unlike OpenAI and Anthropic.
        events = [b"data: " + item + b"\r\n\r\n" for item in bodies]
        bad = b'data: {"candidates": [{"content": \r\n\r\n'
        content_type = b"text/event-stream"
    else:
        # Without ?alt=sse the stream is one JSON array, written element by element.
        events = [b"[" + bodies[0]] + [b",\r\n" + item for item in bodies[1:]] + [b"]"]
        bad = b',\r\n{"candidates": [{"content": '
        content_type = _JSON
    if call.fault == "malformed":
        _malformed_event(events, bad)
    failure = _dumps(
        {"error": {"code": 503, "message": STREAM_ERROR["message"], "status": "UNAVAILABLE"}}
    )
    error = b"data: " + failure + b"\r\n\r\n" if call.stream_format == "sse" else b",\r\n" + failure
    return _stream_reply(call, events, content_type, DROP_AFTER_CONTENT_CHUNKS, error)


# --------------------------------------------------------------------------------------------
# OpenAI media: images, speech, transcriptions and translations, moderations

MEDIA_PATHS = frozenset(
    {
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/moderations",
    }
)
# Speech: 8 kHz mono 16-bit PCM, 20 ms of audio per input character.
SPEECH_SAMPLE_RATE = 8_000
SPEECH_MS_PER_CHARACTER = 20
SPEECH_CHUNKS = 8
# Transcripts of uploads that are not WAV: one second per 16 kB.
TRANSCRIPT_BYTES_PER_SECOND = 16_000
# Words that flag a moderation input, and the category each flags.
MODERATION_WORDS = {
    "kill": ("violence",),
    "hate": ("hate", "harassment"),
    "hurt myself": ("self-harm", "self-harm/intent"),
}
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
_MODERATION_IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "violence",
     "violence/graphic"}
)  # fmt: skip


def _png(width: int = 8, height: int = 8) -> bytes:
    """A valid RGB PNG: a small gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )  # fmt: skip

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 32, y * 32, 128)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


MOCK_PNG = _png()


# One period of a quiet 400 Hz tone (20 samples at 8 kHz), repeated.
_TONE_PERIOD = b"".join(
    struct.pack("<h", int(2000 * math.sin(2 * math.pi * i / 20))) for i in range(20)
)


def _wav(duration_ms: int) -> bytes:
    """A valid WAV of a quiet 400 Hz tone."""
    frames = SPEECH_SAMPLE_RATE * duration_ms // 1000
    samples = (_TONE_PERIOD * (frames // 20 + 1))[: frames * 2]
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SPEECH_SAMPLE_RATE)
        wav.writeframes(samples)
    return out.getvalue()


def _form(request: Request) -> tuple[dict[str, Any], list[tuple[str, str, str, bytes]]]:
    """A multipart/form-data body (read with the standard library's email parser): the text
    fields and the files as (field, filename, content type, bytes)."""
    content_type = request.headers.get("content-type", "")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.body
    )
    if not message.is_multipart():
        raise _BadRequest("expected a multipart/form-data body")
    fields: dict[str, Any] = {}
    files = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise _BadRequest("a form part has no name")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files.append((name, filename, part.get_content_type(), data))
        elif name.endswith("[]"):
            fields.setdefault(name, []).append(data.decode())
        else:
            fields[name] = data.decode()
    return fields, files


def _form_int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _BadRequest(f"'{name}' must be an integer", name) from None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _BadRequest(f"'{name}' must be an integer between {low} and {high}", name)
    return value


def _images(call: _Call, host: str) -> Reply:
    body = call.body
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _BadRequest("'prompt' is required", "prompt")
    if call.files is not None and not any(f[0] in ("image", "image[]") for f in call.files):
        raise _BadRequest("'image' is required", "image")
    n = _form_int(body, "n", 1, 1, 10)
    response_format = body.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise _BadRequest("'response_format' must be 'url' or 'b64_json'", "response_format")
    data = []
    for index in range(n):
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(MOCK_PNG).decode()})
        else:
            data.append({"url": f"http://{host}/_mock/media/img-{call.seq}-{index}.png"})
        data[-1]["revised_prompt"] = f"A mock image of: {_head(prompt)}"
    return Reply(body=_dumps({"created": MODEL_CREATED, "data": data}))


def _speech(call: _Call) -> Reply:
    body = call.body
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise _BadRequest("'input' is required", "input")
    if not body.get("voice"):
        raise _BadRequest("'voice' is required", "voice")
    audio = _wav(len(text) * SPEECH_MS_PER_CHARACTER)
    content_type = b"audio/wav"
    if body.get("response_format") == "pcm":
        audio, content_type = audio[44:], b"audio/pcm"
    size = -(-len(audio) // SPEECH_CHUNKS)
    events = [audio[i : i + size] for i in range(0, len(audio), size)]
    reply = Reply(content_type=content_type, events=events)
    if call.fault == "drop":
        reply.drop_after = min(DROP_AFTER_CONTENT_CHUNKS, len(events) - 1)
    return reply


def _audio_seconds(data: bytes) -> float:
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError):
        return len(data) / TRANSCRIPT_BYTES_PER_SECOND


def _vtt_time(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    return (
        f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d}"
        f"{separator}{millis % 1000:03d}"
    )


def _transcript(call: _Call, task: str) -> Reply:
    uploads = [f for f in call.files or () if f[0] == "file"]
    if not uploads:
        raise _BadRequest("'file' is required", "file")
    data = uploads[0][3]
    seconds = _audio_seconds(data)
    text = f"Mock transcript of {len(data)} bytes."
    fmt = call.body.get("response_format", "json")
    if fmt == "json":
        payload = {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        return Reply(body=_dumps(payload))
    if fmt == "verbose_json":
        segment = {
            "id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text, "tokens": [1, 2, 3],
            "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }  # fmt: skip
        language = "english" if task == "translate" else call.body.get("language", "english")
        payload = {
            "task": task, "language": language, "duration": seconds, "text": text,
            "segments": [segment],
        }  # fmt: skip
        return Reply(body=_dumps(payload))
    if fmt == "text":
        return Reply(body=text.encode() + b"\n", content_type=b"text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        separator = "," if fmt == "srt" else "."
        cue = f"{_vtt_time(0, separator)} --> {_vtt_time(seconds, separator)}\n{text}\n"
        out = f"1\n{cue}\n" if fmt == "srt" else f"WEBVTT\n\n{cue}\n"
        return Reply(body=out.encode(), content_type=b"text/plain; charset=utf-8")
    raise _BadRequest(f"'response_format' {fmt!r} is not supported", "response_format")


def _moderation_result(text: str, kind: str) -> dict[str, Any]:
    lowered = text.lower()
    flagged = {c for word, cats in MODERATION_WORDS.items() if word in lowered for c in cats}
    return {
        "flagged": bool(flagged),
        "categories": {c: c in flagged for c in MODERATION_CATEGORIES},
        "category_scores": {c: 0.9 if c in flagged else 0.0001 for c in MODERATION_CATEGORIES},
        "category_applied_input_types": {
            c: ([kind] if kind == "text" or c in _MODERATION_IMAGE_CATEGORIES else [])
            for c in MODERATION_CATEGORIES
        },
    }


def _moderations(call: _Call) -> Reply:
    raw = call.body.get("input")
    if isinstance(raw, str) and raw:
        results = [_moderation_result(raw, "text")]
    elif isinstance(raw, list) and raw:
        if all(isinstance(item, str) for item in raw):
            results = [_moderation_result(item, "text") for item in raw]
        else:  # multimodal parts: one result for them all
            texts = [str(p.get("text", "")) for p in raw if isinstance(p, dict)]
            kind = "image" if any(p.get("type") == "image_url" for p in raw) else "text"
            results = [_moderation_result(" ".join(texts), kind)]
    else:
        raise _BadRequest("'input' must be a non-empty string or array", "input")
    payload = {"id": f"modr-mock-{call.seq}", "model": call.model, "results": results}
    return Reply(body=_dumps(payload))


# --------------------------------------------------------------------------------------------
# The application: routing, faults, statistics


class MockApp:
    """Turns a parsed request into a `Reply`. Synchronous and pure but for the statistics."""

    def __init__(
        self, latency_ms: int = 0, chunk_delay_ms: int = 0, chunks: int = DEFAULT_CHUNKS
    ) -> None:
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        # Reply length when no x-mock-chunks header says otherwise (a relay drops client headers).
        self.chunks = chunks
        self.stats = Stats()
        self._seq = 0

    def dispatch(self, request: Request) -> Reply:
        if request.path.startswith("/_mock/"):
            return self._control(request)
        family = "openai"
        if request.path == "/v1/messages":
            family = "anthropic"
        elif ":" in request.path and _GEMINI_PATH.match(request.path):
            family = "gemini"
        stats = self.stats
        stats.requests += 1
        stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "json": None,
            "body_size": len(request.body),
        }
        stats.last = record
        try:
            reply = self._provider(request, family, record)
        except _BadRequest as exc:
            reply = _error_reply(family, exc.status, exc.message, exc.param)
        except Exception:  # a bug in the mock must not kill the connection silently
            logger.exception("mock upstream failed on %s %s", request.method, request.path)
            reply = _error_reply(family, 500, "mock upstream crashed; see its log")
        return reply

    def _provider(self, request: Request, family: str, record: dict[str, Any]) -> Reply:
        headers = request.headers
        latency = _header_int(headers, "x-mock-latency-ms", self.latency_ms, 600_000)
        chunk_delay = _header_int(headers, "x-mock-chunk-delay-ms", self.chunk_delay_ms, 600_000)
        chunks = _header_int(headers, "x-mock-chunks", self.chunks, 100_000)
        reply = self._route(request, family, record, chunks)
        reply.latency_ms = latency
        reply.chunk_delay_ms = chunk_delay
        return reply

    def _route(self, request: Request, family: str, record: dict[str, Any], chunks: int) -> Reply:
        method, path = request.method, request.path
        handler: Callable[[_Call], Reply] | None = None
        model_from_path: str | None = None
        if path == "/v1/chat/completions":
            handler = _chat_completions
        elif path == "/v1/completions":
            handler = _completions
        elif path == "/v1/embeddings":
            handler = _embeddings
        elif path == "/v1/messages":
            handler = _anthropic_messages
        elif path == "/v1/responses":
            handler = _responses
        elif path in MEDIA_PATHS:
            handler = self._media_handler(path, request.headers.get("host", "127.0.0.1"))
        elif family == "gemini":
            match = _GEMINI_PATH.match(path)
            assert match is not None
            model_from_path = unquote(match.group(1))
            stream = match.group(2) == "streamGenerateContent"
            stream_format = "sse" if request.query.get("alt") == "sse" else "array"

            def handler(call: _Call) -> Reply:
                call.stream_format = stream_format
                return _gemini_generate(call, stream)

        elif path in ("/v1/models", "/v1/models/"):
            if method != "GET":
                raise _BadRequest(f"Method {method} not allowed on {path}", status=405)
            return self._checked(request, family, None, lambda: Reply(body=_MODEL_LIST))
        elif path.startswith("/v1/models/"):
            if method != "GET":
                raise _BadRequest(f"Method {method} not allowed on {path}", status=405)
            model_id = unquote(path[len("/v1/models/") :])
            return self._checked(
                request, family, model_id, lambda: Reply(body=_dumps(_model_card(model_id)))
            )
        else:
            raise _BadRequest(f"Invalid URL ({method} {path})", status=404)

        if method != "POST":
            raise _BadRequest(f"Method {method} not allowed on {path}", status=405)
        if request.too_large:
            raise _BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes", status=413)
        files = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body, files = _form(request)
            record["json"] = {
                **body,
                "_files": [
                    {"field": f[0], "filename": f[1], "content_type": f[2], "size": len(f[3])}
                    for f in files
                ],
            }
        else:
            try:
                body = _loads(request.body)
            except ValueError:
                body = _NOT_JSON
            else:
                record["json"] = body  # recorded even when refused below: relay tests look at it
        if _api_key(request) == "invalid":
            return self._unauthorized(family)
        if body is _NOT_JSON:
            raise _BadRequest("We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        model = model_from_path or body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("you must provide a model parameter", "model")
        fault = self._fault(request, model)
        if fault in ("500", "429"):
            return self._fault_reply(family, fault, model)
        if fault == "timeout":
            return Reply(hang=True)
        self._seq += 1
        call = _Call(body=body, model=model, fault=fault, chunks=chunks, seq=self._seq, files=files)
        reply = handler(call)
        if fault == "malformed" and reply.events is None:
            reply.body = _MALFORMED_BODY
        if fault == "drop" and reply.events is None:
            reply.close_without_reply = True
        return reply

    @staticmethod
    def _media_handler(path: str, host: str) -> Callable[[_Call], Reply]:
        if path.startswith("/v1/images/"):
            return lambda call: _images(call, host)
        if path == "/v1/audio/speech":
            return _speech
        if path == "/v1/audio/transcriptions":
            return lambda call: _transcript(call, "transcribe")
        if path == "/v1/audio/translations":
            return lambda call: _transcript(call, "translate")
        return _moderations

    def _checked(
        self, request: Request, family: str, model: str | None, build: Callable[[], Reply]
    ) -> Reply:
        """The auth and fault checks of the GET endpoints, which have no body."""
        if _api_key(request) == "invalid":
            return self._unauthorized(family)
        fault = self._fault(request, model)
        if fault in ("500", "429"):
            return self._fault_reply(family, fault, model or "mock")
        if fault == "timeout":
            return Reply(hang=True)
        reply = build()
        if fault == "malformed":
            reply.body = _MALFORMED_BODY
        elif fault == "drop":
            reply.close_without_reply = True
        return reply

    def _fault(self, request: Request, model: str | None) -> str | None:
        fault = request.headers.get("x-mock-fault")
        if fault is None and model is not None and model.startswith(FAULT_MODEL_PREFIX):
            fault = model[len(FAULT_MODEL_PREFIX) :]
        if fault is None:
            return None
        if fault not in FAULTS:
            names = ", ".join(sorted(FAULTS))
            raise _BadRequest(f"unknown mock fault {fault!r}; known faults: {names}")
        self.stats.by_fault[fault] = self.stats.by_fault.get(fault, 0) + 1
        return fault

    @staticmethod
    def _unauthorized(family: str) -> Reply:
        return _error_reply(family, 401, "Incorrect API key provided: invalid.")

    @staticmethod
    def _fault_reply(family: str, fault: str, model: str) -> Reply:
        if fault == "429":
            return _error_reply(family, 429, f"Rate limit reached for {model} (mock fault 429).")
        return _error_reply(
            family, 500, "The server had an error while processing your request (mock fault 500)."
        )

    def _control(self, request: Request) -> Reply:
        route = (request.method, request.path)
        if route == ("GET", "/_mock/stats"):
            return Reply(body=_dumps(self.stats.snapshot()))
        if route == ("POST", "/_mock/reset"):
            self.stats.reset()
            return Reply(body=_dumps(self.stats.snapshot()))
        if route == ("GET", "/_mock/last"):
            return Reply(body=_dumps(self.stats.last))
        if request.method == "GET" and _MEDIA_URL.match(request.path):
            return Reply(body=MOCK_PNG, content_type=b"image/png")
        return _error_reply("openai", 404, f"Invalid URL ({request.method} {request.path})")


# --------------------------------------------------------------------------------------------
# HTTP/1.1 on a raw asyncio protocol


def _reply_head(reply: Reply, content_length: int | None, keep_alive: bool) -> bytes:
    parts = [_STATUS_LINES[reply.status], b"content-type: ", reply.content_type, b"\r\n"]
    if content_length is None:
        parts.append(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
    else:
        parts += [b"content-length: ", str(content_length).encode(), b"\r\n"]
    for name, value in reply.headers:
        parts += [name, b": ", value, b"\r\n"]
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"server: tokenbyte-mock\r\n\r\n")
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection. Requests are answered strictly in order, so pipelining is safe;
    a reply that needs no waiting is written straight from the parser callback (the fast path)."""

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.too_large = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()  # stops a sleeping or streaming handler at once
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self.header_list:
            # curl asks before sending a large body; answer only when nothing else is in flight.
            if (
                name.lower() == b"expect"
                and value.lower() == b"100-continue"
                and self.task is None
                and not self.queue
                and self.transport is not None
            ):
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(body)
        if self.body_size > MAX_BODY_BYTES:
            self.too_large = True
            self.body_parts.clear()
        else:
            self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.closed:
            return
        parsed = httptools.parse_url(self.url)
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.header_list:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query = dict(parse_qsl(parsed.query.decode("latin-1"))) if parsed.query else {}
        request = Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            path=parsed.path.decode("latin-1"),
            query=query,
            headers=headers,
            body=b"".join(self.body_parts),
            keep_alive=self.parser.should_keep_alive(),
            too_large=self.too_large,
        )
        self._reset_message()
        if self.task is None and not self.queue:
            self._handle(request)
        else:
            self.queue.append(request)
            if len(self.queue) >= MAX_PIPELINED and not self.reading_paused:
                self.reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()

    # request handling

    def _handle(self, request: Request) -> None:
        reply = self.app.dispatch(request)
        if reply.latency_ms == 0 and not reply.hang and not reply.close_without_reply:
            if reply.events is None:
                self._write_reply(reply, request.keep_alive)
                return
            if reply.chunk_delay_ms == 0:
                self._write_stream_at_once(reply, request.keep_alive)
                return
        self.task = self.loop.create_task(self._answer_later(request, reply))

    async def _answer_later(self, request: Request, reply: Reply) -> None:
        stats = self.app.stats
        streaming = False
        try:
            if reply.latency_ms:
                await asyncio.sleep(reply.latency_ms / 1000)
            if reply.hang:
                await asyncio.sleep(TIMEOUT_FAULT_SECONDS)
                self._close()
            elif reply.close_without_reply:
                self._close()
            elif reply.events is None:
                self._write_reply(reply, request.keep_alive)
            else:
                streaming = True
                await self._stream(reply, request.keep_alive)
        except asyncio.CancelledError:
            if streaming:
                stats.streams_cancelled += 1
            else:
                stats.requests_cancelled += 1
            # Swallowed on purpose: the client is gone and nothing awaits this task.
        finally:
            self.task = None
        if not self.closed:
            self._next()

    async def _stream(self, reply: Reply, keep_alive: bool) -> None:
        assert reply.events is not None and self.transport is not None
        if not reply.chunk_delay_ms:
            self._write_stream_at_once(reply, keep_alive)
            return
        stats = self.app.stats
        transport = self.transport
        delay = reply.chunk_delay_ms / 1000
        transport.write(_reply_head(reply, None, keep_alive))
        stats.streams_started += 1
        for index, event in enumerate(reply.events):
            if index == reply.drop_after:
                stats.streams_dropped += 1
                self._close()  # flushes what was sent, then FIN without the last chunk
                return
            if delay and index:
                await asyncio.sleep(delay)
            transport.write(b"%x\r\n%b\r\n" % (len(event), event))
            stats.stream_events_sent += 1
            if self.write_paused:
                self.drain_waiter = self.loop.create_future()
                await self.drain_waiter
        transport.write(b"0\r\n\r\n")
        stats.streams_completed += 1
        if not keep_alive:
            self._close()

    def _write_stream_at_once(self, reply: Reply, keep_alive: bool) -> None:
        # Without a chunk delay nothing could tell the events apart on the wire anyway (the kernel
        # coalesces them); one write instead of one per event makes a stream ~2.5x cheaper, which
        # matters when the mock shares the benchmark machine with the relay.
        if self.closed or self.transport is None:
            return
        assert reply.events is not None
        stats = self.app.stats
        cut = reply.drop_after
        sent = reply.events if cut is None else reply.events[:cut]
        parts = [_reply_head(reply, None, keep_alive)]
        parts.extend(b"%x\r\n%b\r\n" % (len(event), event) for event in sent)
        if cut is None:
            parts.append(b"0\r\n\r\n")
        self.transport.write(b"".join(parts))
        stats.streams_started += 1
        stats.stream_events_sent += len(sent)
        if cut is not None:
            stats.streams_dropped += 1
            self._close()  # flushes what was sent, then FIN without the last chunk
        else:
            stats.streams_completed += 1
            if not keep_alive:
                self._close()

    def _next(self) -> None:
        while self.queue and self.task is None and not self.closed:
            self._handle(self.queue.popleft())
        if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2 and not self.closed:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def _write_reply(self, reply: Reply, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(_reply_head(reply, len(reply.body), keep_alive) + reply.body)
        if not keep_alive:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        self._write_reply(_error_reply("openai", status, message), keep_alive=False)

    def _close(self) -> None:
        self.closed = True
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class MockServer:
    """The listening socket plus its application and live connections, on the running loop."""

    def __init__(
        self, latency_ms: int = 0, chunk_delay_ms: int = 0, chunks: int = DEFAULT_CHUNKS
    ) -> None:
        self.app = MockApp(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms, chunks=chunks)
        self.connections: set[_Connection] = set()
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=2048
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None


async def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    latency_ms: int = 0,
    chunk_delay_ms: int = 0,
    *,
    chunks: int = DEFAULT_CHUNKS,
    ready: Callable[[MockServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or forever / until cancelled). `ready` gets the bound server."""
    server = MockServer(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms, chunks=chunks)
    await server.start(host, port)
    try:
        if ready is not None:
            ready(server)
        if stop is None:
            await asyncio.Future()
        else:
            await stop.wait()
    finally:
        await server.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(
    host: str,
    port: int,
    latency_ms: int = 0,
    chunk_delay_ms: int = 0,
    *,
    chunks: int = DEFAULT_CHUNKS,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; both end it cleanly. Raises OSError when
    the address cannot be bound."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)

        def on_ready(server: MockServer) -> None:
            if announce is not None:
                announce(
                    f"Mock upstream listening on http://{server.host}:{server.port}/v1 "
                    f"(latency {latency_ms} ms, chunk delay {chunk_delay_ms} ms); Ctrl-C to stop."
                )

        try:
            await serve(
                host, port, latency_ms, chunk_delay_ms, chunks=chunks, ready=on_ready, stop=stop
            )
        finally:
            # Hand SIGINT back to Python (KeyboardInterrupt) for whoever runs after us.
            for signum in signals:
                loop.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(main())


# --------------------------------------------------------------------------------------------
# Tests: the server on a background thread


class _AppKnob:
    """A MockUpstream attribute that reads and writes the running app's setting of that name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, owner: Any, owner_type: type | None = None) -> int:
        return getattr(owner._server.app, self.name)

    def __set__(self, owner: Any, value: int) -> None:
        setattr(owner._server.app, self.name, value)


class MockUpstream(LoopThread):
    """A mock upstream on a free loopback port, served from a background thread.

    with MockUpstream(latency_ms=0) as mock:
        client = openai.OpenAI(base_url=mock.base_url, api_key="sk-test")
        ...
        assert mock.stats["streams_completed"] == 1
        assert mock.last_request["json"]["model"] == "gpt-4o-mini"
    """

    thread_name = "mock-upstream"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
    ) -> None:
        self._server = MockServer(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms)
        super().__init__(self._server, host=host, port=port, new_loop=_new_loop)

    # addresses

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """Root URL without a path: http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL: http://127.0.0.1:PORT/v1"""
        return f"{self.url}/v1"

    # knobs, changeable while running (plain attribute writes, read per request)

    latency_ms = _AppKnob("latency_ms")
    chunk_delay_ms = _AppKnob("chunk_delay_ms")
    # Reply length in words (completion tokens) when a request sets no x-mock-chunks.
    chunks = _AppKnob("chunks")

    # statistics, read and reset on the server's own loop so counters are never torn

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: requests, streams_started/completed/cancelled/dropped, by_path, ..."""
        return self.call(self._server.app.stats.snapshot)

    @property
    def last_request(self) -> dict[str, Any] | None:
        """The last provider request: method, path, query, headers (lower-case), json, body_size."""
        return self.call(lambda: copy.deepcopy(self._server.app.stats.last))

    def reset(self) -> None:
        self.call(self._server.app.stats.reset)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Poll the statistics until `predicate(stats)` holds; return them, or raise TimeoutError.
        For effects that land after the client call returns, such as a cancelled stream."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mock upstream stats never matched: {stats}")
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Standalone entry point


def describe_os_error(exc: OSError) -> str:
    """ "Address already in use" rather than uvloop's long bind message."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mockupstream.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--chunk-delay-ms", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="reply length")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.latency_ms < 0 or args.chunk_delay_ms < 0:
        parser.error("--latency-ms and --chunk-delay-ms must not be negative")
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    try:
        run(
            args.host,
            args.port,
            args.latency_ms,
            args.chunk_delay_ms,
            chunks=args.chunks,
            announce=lambda line: print(line, flush=True),
        )
    except OSError as exc:
        parser.exit(
            1, f"error: cannot listen on {args.host}:{args.port}: {describe_os_error(exc)}\n"
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
