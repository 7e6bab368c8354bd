"""Anthropic's Messages format inbound (/v1/messages): translations to and from OpenAI chat.

Anthropic channels get the client's body as it came. For OpenAI-compatible and Gemini channels
the body becomes an OpenAI chat completions body (which the Gemini adapter translates on), and
the answer, streamed or not, becomes an Anthropic message again. Usage is kept in Anthropic's
terms on the way out: its input_tokens leaves out the tokens read from and written to the
prompt cache, which are counted apart.
"""

import uuid
from collections.abc import Callable

import orjson

from relay.adapters import StreamTranslator
from relay.adapters.anthropic import (
    SSEReader,
    invalid_request,
    invalid_response,
    is_web_url,
)
from relay.http import RelayError
from relay.metering import (
    MAX_TOKEN_COUNT,
    TOKENS_PER_IMAGE,
    TOKENS_PER_MESSAGE,
    TOKENS_REPLY_PRIMING,
    Usage,
    count_text,
)
from relay.streaming import EventMeter, named_event
from tokenbyte.money import ceil_div

PROVIDER_TYPE = "anthropic"
# OpenAI finish reasons as Anthropic stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic's error types by HTTP status; other statuses from 500 on are api_error.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(error: RelayError) -> dict:
    """A relay error in Anthropic's shape."""
    kind = ERROR_TYPES.get(error.status)
    if kind is None:
        kind = "api_error" if error.status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


# --- prompt estimate ----------------------------------------------------------------------------


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return count_text(content)
    total = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            total += count_text(str(block.get("text") or ""))
        elif kind == "image":
            total += TOKENS_PER_IMAGE
        elif kind == "tool_use":
            total += count_text(str(block.get("name") or ""))
            total += count_text(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_result":
            total += _content_tokens(block.get("content"))
        elif kind == "thinking":
            total += count_text(str(block.get("thinking") or ""))
        else:
            # Documents and other opaque blocks: their size as text, an over-estimate for the hold.
            total += ceil_div(len(orjson.dumps(block)), 4)
    return total


def prompt_tokens(body: dict) -> int:
    """Our count of a Messages request's prompt tokens (system, messages, tools)."""
    total = TOKENS_REPLY_PRIMING + _content_tokens(body.get("system"))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
    if body.get("tools"):
        total += count_text(orjson.dumps(body["tools"]).decode())
    return total


# --- usage --------------------------------------------------------------------------------------


def _tokens(value: object) -> int:
    return min(max(0, int(value or 0)), MAX_TOKEN_COUNT)


def usage_of(usage: object) -> Usage | None:
    """Anthropic usage as the relay's: prompt_tokens counts cache reads and writes too."""
    if not isinstance(usage, dict):
        return None
    try:
        cached = _tokens(usage.get("cache_read_input_tokens"))
        written = _tokens(usage.get("cache_creation_input_tokens"))
        return Usage(
            prompt_tokens=_tokens(usage.get("input_tokens")) + cached + written,
            completion_tokens=_tokens(usage.get("output_tokens")),
            cached_tokens=cached,
            cache_write_tokens=written,
            reported=True,
        )
    except (TypeError, ValueError, OverflowError):
        return None


def usage_body(usage: Usage) -> dict:
    """The relay's usage in Anthropic's terms."""
    return {
        "input_tokens": max(
            0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        ),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


def message_text(message: dict) -> str:
    """The text of a message's content blocks (tool calls included), for counts and excerpts."""
    parts = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            parts.append(str(block.get("name") or ""))
            parts.append(orjson.dumps(block.get("input") or {}).decode())
    return "".join(parts)


# --- request: Anthropic Messages -> OpenAI chat -------------------------------------------------


def _text(content: object, param: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif isinstance(block, dict) and block.get("type") == "image":
            raise invalid_request("Images in this place can only go to Anthropic channels.", param)
    return "".join(parts)


def _image_part(block: dict) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid_request("An image block needs a 'source'.")
    if source.get("type") == "base64" and source.get("data"):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and is_web_url(str(source.get("url") or "")):
        url = source["url"]
    else:
        raise invalid_request("An image source must be base64 data or an http(s) URL.")
    return {"type": "image_url", "image_url": {"url": url}}


def _user_messages(content: object) -> list[dict]:
    """A user turn: its tool results as tool messages (they answer the assistant's calls, so they
    come first), then what else it says."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results, parts = [], []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "tool_result":
            text = _text(block.get("content"), "messages")
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id") or ""),
                    "content": f"Error: {text}" if block.get("is_error") else text,
                }
            )
        else:
            raise invalid_request(f"'{kind}' content blocks can only go to Anthropic channels.")
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant_message(content: object) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text, calls = [], []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            # Thinking is the model's own: it is not sent back to a provider that did not write it.
            raise invalid_request(f"'{kind}' content blocks can only go to Anthropic channels.")
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: list) -> list[dict]:
    functions = []
    for tool in tools:
        if tool.get("type") not in (None, "custom"):
            raise invalid_request(
                f"The tool type '{tool['type']}' can only go to Anthropic channels.", "tools"
            )
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
        if tool.get("description"):
            function["description"] = tool["description"]
        functions.append({"type": "function", "function": function})
    return functions


def _tool_choice(choice: dict) -> object:
    kind = choice.get("type")
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return kind  # "auto" or "none"


def chat_request(body: dict) -> dict:
    """The OpenAI chat completions body for a Messages body (model and max_tokens are set by
    the call, per channel)."""
    messages: list[dict] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system")})
    for message in body["messages"]:
        if message["role"] == "user":
            messages.extend(_user_messages(message["content"]))
        else:
            messages.append(_assistant_message(message["content"]))
    out: dict = {"model": body["model"], "messages": messages}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        choice = body.get("tool_choice")
        if choice:
            out["tool_choice"] = _tool_choice(choice)
            if choice.get("disable_parallel_tool_use"):
                out["parallel_tool_calls"] = False
    return out


# --- answer: OpenAI chat -> Anthropic message ---------------------------------------------------


def _arguments(raw: object) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def message_response(data: dict, model: str) -> dict:
    """An Anthropic message for an OpenAI chat.completion (its first choice)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise invalid_response()
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = (call or {}).get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                "name": function.get("name") or "",
                "input": _arguments(function.get("arguments")),
            }
        )
    out = {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": data.get("model") or model,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
    }
    usage = Usage.from_openai(data.get("usage"))
    if usage is not None:
        out["usage"] = usage_body(usage)
    return out


class MessagesStream:
    """OpenAI chat.completion.chunk events in (from `inner` when the provider speaks another
    format), Anthropic's stream events out."""

    def __init__(self, model: str, inner: StreamTranslator | None = None) -> None:
        self.inner = inner
        self.reader = SSEReader()
        self.model = model
        self.started = False
        self.block: object = None  # "text", or the OpenAI index of the open tool call
        self.index = -1  # of the open content block
        self.stop_reason = "end_turn"
        self.usage: Usage | None = None
        self.broken = False

    def feed(self, data: bytes) -> bytes:
        if self.inner is not None:
            data = self.inner.feed(data)
        return self._translate(self.reader.feed(data)) if data else b""

    def close(self) -> bytes:
        out = []
        if self.inner is not None:
            tail = self.inner.close()
            if tail:
                out.append(self._translate(self.reader.feed(tail)))
        out.append(self._translate(self.reader.close()))
        return b"".join(out)

    def _translate(self, events: list[tuple[str, bytes]]) -> bytes:
        out: list[bytes] = []
        for _name, payload in events:
            if self.broken:
                break
            self._event(payload, out)
        return b"".join(out)

    def _start(self, chunk: dict, out: list[bytes]) -> None:
        self.started = True
        message = {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(named_event("message_start", {"type": "message_start", "message": message}))
        out.append(named_event("ping", {"type": "ping"}))

    def _open(self, block: object, content_block: dict, out: list[bytes]) -> None:
        self._close_block(out)
        self.block = block
        self.index += 1
        out.append(
            named_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": self.index,
                    "content_block": content_block,
                },
            )
        )

    def _close_block(self, out: list[bytes]) -> None:
        if self.block is not None:
            out.append(
                named_event(
                    "content_block_stop", {"type": "content_block_stop", "index": self.index}
                )
            )
            self.block = None

    def _delta(self, delta: dict, out: list[bytes]) -> None:
        out.append(
            named_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta},
            )
        )

    def _event(self, payload: bytes, out: list[bytes]) -> None:
        if payload.strip() == b"[DONE]":
            self._finish(out)
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            # Handed on unparsable: the meter flags it, as for any other garbled stream.
            self.broken = True
            out.append(
                b"event: content_block_delta\ndata: " + payload.replace(b"\n", b" ") + b"\n\n"
            )
            return
        error = chunk.get("error")
        if isinstance(error, dict):
            overloaded = "overloaded" in str(error.get("type") or error.get("code") or "")
            body = {
                "type": "overloaded_error" if overloaded else "api_error",
                "message": str(error.get("message") or "The upstream provider reported an error."),
            }
            out.append(named_event("error", {"type": "error", "error": body}))
            return
        if not self.started:
            self._start(chunk, out)
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices") or ()
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text:
            if self.block != "text":
                self._open("text", {"type": "text", "text": ""}, out)
            self._delta({"type": "text_delta", "text": text}, out)
        for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or ():
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            position = call.get("index", 0)
            if self.block != position or call.get("id"):
                block = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                self._open(position, block, out)
            if function.get("arguments"):
                self._delta(
                    {"type": "input_json_delta", "partial_json": function["arguments"]}, out
                )
        reason = choice.get("finish_reason")
        if reason:
            self.stop_reason = STOP_REASONS.get(str(reason), "end_turn")

    def _finish(self, out: list[bytes]) -> None:
        if not self.started:
            self._start({}, out)
        self._close_block(out)
        message_delta: dict = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
        }
        if self.usage is not None:
            message_delta["usage"] = usage_body(self.usage)
        out.append(named_event("message_delta", message_delta))
        out.append(named_event("message_stop", {"type": "message_stop"}))


# --- metering the client's stream ---------------------------------------------------------------


class MessagesMeter(EventMeter):
    """Meters Anthropic's stream events; the message_delta event gets the usage (our count when
    the provider sent none) and its cost."""

    def __init__(
        self, *, cost_for: Callable[[Usage], float], local_usage: Callable[[int], Usage]
    ) -> None:
        super().__init__(cost_for=cost_for)
        self.local_usage = local_usage
        self.start_usage: dict = {}

    def read(self, kind: str, payload: dict, event: bytes) -> bytes | None:
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if isinstance(delta, dict):
                self.add_text(
                    str(
                        delta.get("text")
                        or delta.get("partial_json")
                        or delta.get("thinking")
                        or ""
                    )
                )
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if isinstance(block, dict):
                self.add_text(str(block.get("name") or block.get("text") or ""))
        elif kind == "message_start":
            message = payload.get("message") or {}
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self.start_usage = usage
        elif kind == "message_delta":
            return self._usage_event(payload)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = payload.get("error") or {}
            self.error = (
                str(error.get("message") or "The upstream provider reported an error."),
                str(error.get("type") or "upstream_error"),
            )
            self.done = True
        return event

    def _usage_event(self, payload: dict) -> bytes:
        # Anthropic sends the input side in message_start and the output in message_delta
        # (newer versions repeat all of it there); the usage is reported when message_delta has it.
        delta_usage = payload.get("usage")
        usage = None
        if isinstance(delta_usage, dict):
            merged = {**self.start_usage}
            merged.update((k, v) for k, v in delta_usage.items() if v is not None)
            usage = usage_of(merged)
        if usage is not None:
            self.usage = usage
        else:
            usage = self.local_usage(self.delivered_completion_tokens())
        extra = delta_usage if isinstance(delta_usage, dict) else {}
        payload["usage"] = {**extra, **usage_body(usage), "cost": self.cost_for(usage)}
        return named_event("message_delta", payload)


def error_event(message: str, code: str) -> bytes:
    """The relay's own error event, for a stream that fails part-way."""
    kind = "overloaded_error" if "overloaded" in code else "api_error"
    return named_event("error", {"type": "error", "error": {"type": kind, "message": message}})


def is_stop_event(event: bytes) -> bool:
    return event.startswith(b"event: message_stop")
