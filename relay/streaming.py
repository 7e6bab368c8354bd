"""Server-sent events passed through event by event, metered on the way.

Bytes are forwarded as soon as an event is complete (never the whole response). Each `data:`
event is read for its delta text (our own count, used when the upstream sends no usage) and for
the usage chunk, which gets `cost` added, or is hidden from a client that did not ask for it.
"""

from collections.abc import Callable

import orjson

from relay.metering import Usage, count_text

DONE = b"[DONE]"


def _delta_text(chunk: dict) -> str:
    parts = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if "text" in choice:  # legacy completions
            parts.append(str(choice.get("text") or ""))
            continue
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            continue
        for key in ("content", "reasoning_content", "refusal"):
            if delta.get(key):
                parts.append(str(delta[key]))
        for call in delta.get("tool_calls") or ():
            function = (call or {}).get("function") or {}
            parts.append(str(function.get("name") or ""))
            parts.append(str(function.get("arguments") or ""))
    return "".join(parts)


class StreamMeter:
    """Splits an upstream SSE byte stream into events (each handed to `_process`, which says
    what to forward) and keeps what the stream delivered: text, usage, an error, an excerpt."""

    def __init__(self, *, cost_for: Callable[[Usage], float]) -> None:
        self.cost_for = cost_for
        self.buffer = b""
        self.usage: Usage | None = None
        self.delivered_text: list[str] = []
        self.done = False
        # The upstream sent an event that is not JSON: the stream cannot be trusted after it.
        self.malformed = False
        # The upstream reported an error in the stream: (message, code), forwarded as it came.
        self.error: tuple[str, str] | None = None
        self.first_content_seen = False
        self.excerpt: list[str] = []
        self._excerpt_len = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Complete events (with their blank-line terminator) to forward now."""
        self.buffer += data
        if b"\r\n" in self.buffer:
            self.buffer = self.buffer.replace(b"\r\n", b"\n")
        out = []
        while not self.malformed:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                break
            event, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
            forwarded = self._process(event)
            if forwarded:
                out.append(forwarded)
        return out

    def _process(self, event: bytes) -> bytes | None:
        """What to forward for one complete event (itself, a rewritten one, or None)."""
        return event

    def add_text(self, text: str) -> None:
        if not text:
            return
        self.first_content_seen = True
        self.delivered_text.append(text)
        if self._excerpt_len < 500:
            self.excerpt.append(text)
            self._excerpt_len += len(text)

    def delivered_completion_tokens(self) -> int:
        return count_text("".join(self.delivered_text))

    def response_excerpt(self) -> str:
        return "".join(self.excerpt)[:500]


class SSEMeter(StreamMeter):
    """Meters OpenAI's chat stream (`data:` chunks ending in [DONE])."""

    def __init__(self, *, show_usage: bool, cost_for: Callable[[Usage], float]) -> None:
        super().__init__(cost_for=cost_for)
        self.show_usage = show_usage
        # id, model and created of the first chunk, for a usage chunk of our own.
        self.meta: tuple | None = None

    def _process(self, event: bytes) -> bytes | None:
        data_lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if not data_lines:
            return event  # comments, keep-alives, event names
        payload = b"\n".join(data_lines)
        if payload == DONE:
            self.done = True
            return event
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            self.malformed = True
            return None
        if self.meta is None:
            self.meta = (chunk.get("id"), chunk.get("model"), chunk.get("created"))
        error = chunk.get("error")
        if isinstance(error, dict):
            self.error = (
                str(error.get("message") or "The upstream provider reported an error."),
                str(error.get("code") or error.get("type") or "upstream_error"),
            )
            return event
        self.add_text(_delta_text(chunk))
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is None:
            return event
        self.usage = usage
        if not self.show_usage:
            if not chunk.get("choices"):
                return None  # the usage-only chunk the client did not ask for
            chunk.pop("usage", None)
        else:
            chunk["usage"]["cost"] = self.cost_for(usage)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


def usage_event(meter: SSEMeter, usage: Usage, cost: float) -> bytes:
    """The usage chunk (choices empty, cost added) for a stream that failed before the upstream
    sent its own: a client that asked for include_usage still learns what the call cost."""
    chunk_id, model, created = meter.meta or ("", "", 0)
    chunk = {
        "id": chunk_id or "",
        "object": "chat.completion.chunk",
        "created": created or 0,
        "model": model or "",
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "cost": cost,
        },
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def error_event(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def done_event() -> bytes:
    return b"data: [DONE]\n\n"


def is_done_event(event: bytes) -> bool:
    """Whether a complete event (as SSEMeter.feed returns them) is the [DONE] sentinel."""
    data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return data == [DONE]


# --- streams of named events (Anthropic's Messages and OpenAI's Responses formats) ---------------


def named_event(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class EventMeter(StreamMeter):
    """Splits a stream of named events (`event:` then `data:`) into events and meters them.

    Like SSEMeter it is a StreamMeter, so one pump streams either format; a subclass reads its
    format's events in `read`. `done` means the stream reached its end in its format (for these
    formats an error event is one: nothing follows it).
    """

    def _process(self, event: bytes) -> bytes | None:
        name = ""
        data_lines = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip())
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if not data_lines:
            return event  # comments and keep-alives
        try:
            payload = orjson.loads(b"\n".join(data_lines))
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            self.malformed = True
            return None
        return self.read(str(payload.get("type") or name), payload, event)

    def read(self, kind: str, payload: dict, event: bytes) -> bytes | None:
        """What to forward for one event of its format (`event` itself, a rewritten one, or
        None); a subclass reads what it meters first."""
        return event
