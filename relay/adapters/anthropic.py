"""Anthropic Messages channels: OpenAI chat completions translated to POST /messages and back.

Only chat completions translate; the legacy completions and embeddings endpoints have no
Anthropic counterpart. The first section holds the format-neutral helpers (SSE framing, OpenAI
chunks and usage, content parts) that the Gemini adapter shares.
"""

import re
import time
import uuid

import orjson

from relay.adapters import UpstreamRequest
from relay.http import RelayError
from relay.routing import Route
from relay.streaming import done_event, error_event
from relay.upstream import UpstreamFailure

# --- shared with relay/adapters/gemini.py ------------------------------------------------------

CHAT = "chat.completions"
_DATA_URL = re.compile(r"^data:([^;,]+)(?:;[^;,]*)*;base64,(.*)$", re.DOTALL)


def now() -> int:
    return int(time.time())


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def conversion_not_implemented(provider: str, endpoint: str) -> RelayError:
    return RelayError(
        501, f"{provider} channels do not support {endpoint}: conversion not implemented.",
        code="conversion_not_implemented",
    )  # fmt: skip


def invalid_request(message: str, param: str = "messages") -> RelayError:
    return RelayError(400, message, param=param, code="invalid_value")


def invalid_response() -> UpstreamFailure:
    # Retryable, like any other garbled upstream answer: another channel may do better.
    return UpstreamFailure(
        502, "The upstream provider sent an invalid response.",
        code="invalid_upstream_response", retryable=True,
    )  # fmt: skip


def max_output_tokens(body: dict) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value


def stop_sequences(stop: object) -> list[str] | None:
    if isinstance(stop, str):
        return [stop] if stop else None
    if isinstance(stop, list):
        return [str(s) for s in stop if s] or None
    return None


def content_parts(content: object) -> list[dict]:
    """A message's content as a list of OpenAI content parts (a string is one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [
            {"type": "text", "text": part} if isinstance(part, str) else part
            for part in content
            if isinstance(part, str | dict)
        ]
    raise invalid_request("A message's 'content' must be a string or an array of content parts.")


def text_of(content: object) -> str:
    """The text of a content (string or parts), for places that take text only."""
    return "".join(
        str(part.get("text") or part.get("refusal") or "")
        for part in content_parts(content)
        if part.get("type") in ("text", "refusal")
    )


def image_url_of(part: dict) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid_request("An 'image_url' content part needs a 'url'.")
    return url


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 `data:` URL, or None for anything else."""
    match = _DATA_URL.match(url)
    return (match.group(1), match.group(2)) if match else None


def is_web_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def tool_arguments(raw: object) -> dict:
    """An OpenAI tool call's `arguments` (a JSON string) as the object providers want."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise invalid_request("A tool call's 'arguments' must be a JSON object.")
    return value


def tool_call(call_id: str, name: str, arguments: object) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments or {}).decode()},
    }


def function_tools(body: dict) -> list[dict]:
    """The `function` objects of the request's tools (other tool types have no translation)."""
    functions = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_request("Each tool must be a function with a 'name'.", param="tools")
        functions.append(function)
    return functions


def named_tool_choice(choice: object) -> str | None:
    """The function name of a `{"type": "function", "function": {"name": …}}` tool choice."""
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    raise invalid_request(
        "'tool_choice' must be 'none', 'auto', 'required' or a named function.", "tool_choice"
    )


def openai_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion(completion_id: str, model: str, choices: list[dict], usage: dict | None) -> dict:
    data = {
        "id": completion_id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return data


def sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def malformed_event(payload: bytes) -> bytes:
    # Handed on as it came: SSEMeter flags the non-JSON event, and the relay fails over (before
    # the first byte) or ends the stream with an error, as it does for OpenAI channels. Line
    # breaks become spaces, which cannot turn invalid JSON into valid JSON.
    return b"data: " + payload.replace(b"\n", b" ") + b"\n\n"


class SSEReader:
    """Splits a byte stream, cut anywhere, into (event name, data) pairs."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer += data
        if b"\r" in self.buffer:
            # Gemini frames with CRLF; a CR at the end waits for its LF in the next piece.
            self.buffer = self.buffer.replace(b"\r\n", b"\n")
        events = []
        while (end := self.buffer.find(b"\n\n")) >= 0:
            raw, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            event = self._parse(raw)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[tuple[str, bytes]]:
        """A last event that came without its blank line."""
        raw, self.buffer = self.buffer.strip(), b""
        event = self._parse(raw) if raw else None
        return [event] if event is not None else []

    @staticmethod
    def _parse(raw: bytes) -> tuple[str, bytes] | None:
        name, data = "", []
        for line in raw.split(b"\n"):
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"event":
                name = value.decode("utf-8", "replace").strip()
            elif field == b"data":
                data.append(value)
        if not data:
            return None  # comments and keep-alives
        return name, b"\n".join(data)


class Chunks:
    """The `chat.completion.chunk` events of one translated stream."""

    def __init__(self, model: str) -> None:
        self.id = new_completion_id()
        self.model = model
        self.created = now()

    def _base(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def delta(self, index: int, delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**self._base(), "choices": [choice]})

    def usage(self, usage: dict) -> bytes:
        return sse({**self._base(), "choices": [], "usage": usage})


# --- Anthropic ----------------------------------------------------------------------------------

PROVIDER = "Anthropic"
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens. The relay always sets one; this covers a body without it.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def _image_block(url: str) -> dict:
    inline = parse_data_url(url)
    if inline is not None:
        media_type, data = inline
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if is_web_url(url):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request("An image URL must be http(s) or a base64 data: URL.")


def _blocks(content: object) -> list[dict]:
    blocks = []
    for part in content_parts(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = str(part.get("text") or part.get("refusal") or "")
            if text:  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(image_url_of(part)))
        else:
            raise invalid_request(f"{PROVIDER} channels do not support '{kind}' content parts.")
    return blocks


def _tool_result(message: dict) -> dict:
    content = message.get("content")
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request("A 'tool' message needs the 'tool_call_id' it answers.")
    return {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": content if isinstance(content, str) else _blocks(content),
    }


def _messages(messages: list) -> tuple[str, list[dict]]:
    """(system prompt, Anthropic messages). Consecutive messages of one role are merged, which
    also puts the answers to parallel tool calls in the one user turn Anthropic requires."""
    system: list[str] = []
    out: list[dict] = []
    for message in messages:
        if not isinstance(message, dict):
            raise invalid_request("Each message must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(message.get("content"))
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = (call or {}).get("function") or {}
                blocks.append({
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": tool_arguments(function.get("arguments")),
                })  # fmt: skip
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            raise invalid_request(f"{PROVIDER} channels do not support the message role {role!r}.")
        if not blocks:
            continue  # Anthropic refuses empty messages
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def _tool_choice(body: dict) -> dict | None:
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    else:
        mapped = {"type": "tool", "name": named_tool_choice(choice)}
    if body.get("parallel_tool_calls") is False:
        mapped["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto
    return mapped


def chat_request(body: dict) -> dict:
    """The Anthropic Messages body for an OpenAI chat completions body."""
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid_request(
            f"{PROVIDER} channels return one choice per request: 'n' must be 1.", "n"
        )
    system, messages = _messages(body.get("messages") or [])
    out: dict = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": max_output_tokens(body) or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    functions = function_tools(body)
    if functions:
        out["tools"] = [
            {
                "name": f["name"],
                "description": f.get("description") or "",
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in functions
        ]
        choice = _tool_choice(body)
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def usage_from(usage: object) -> dict | None:
    """Anthropic usage in OpenAI's terms: its input_tokens leaves out cache reads and writes."""
    if not isinstance(usage, dict):
        return None
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (
        int(usage.get("input_tokens") or 0)
        + cached
        + int(usage.get("cache_creation_input_tokens") or 0)
    )
    return openai_usage(prompt, int(usage.get("output_tokens") or 0), cached)


def chat_response(data: dict, model: str) -> dict:
    """An OpenAI chat.completion for an Anthropic message."""
    content = data.get("content")
    if not isinstance(content, list):
        raise invalid_response()
    text, reasoning, calls = [], [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            calls.append(tool_call(block.get("id"), block.get("name"), block.get("input")))
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(data.get("stop_reason")),
    }
    return completion(
        data.get("id") or new_completion_id(), data.get("model") or model, [choice],
        usage_from(data.get("usage")),
    )  # fmt: skip


class AnthropicStream:
    """Anthropic's stream events in, OpenAI chat.completion.chunk events out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.reader = SSEReader()
        self.chunks = Chunks(model)
        self.include_usage = include_usage
        self.usage: dict | None = None  # Anthropic's fields, merged as events report them
        self.tool_positions: dict[object, int] = {}  # content block index -> tool_calls index
        self.finished = False
        self.broken = False

    def feed(self, data: bytes) -> bytes:
        return self._translate(self.reader.feed(data))

    def close(self) -> bytes:
        # [DONE] only ever follows message_stop: a stream cut short stays visibly cut short.
        return self._translate(self.reader.close())

    def _translate(self, events: list[tuple[str, bytes]]) -> bytes:
        out = []
        for name, payload in events:
            if self.broken:
                break
            out.append(self._event(name, payload))
        return b"".join(out)

    def _merge_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.usage = {**(self.usage or {}), **{k: v for k, v in usage.items() if v is not None}}

    def _event(self, name: str, payload: bytes) -> bytes:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self.broken = True
            return malformed_event(payload)
        kind = event.get("type") or name
        chunks = self.chunks
        if kind == "message_start":
            message = event.get("message") or {}
            chunks.id = message.get("id") or chunks.id
            chunks.model = message.get("model") or chunks.model
            self._merge_usage(message.get("usage"))
            return chunks.delta(0, {"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = len(self.tool_positions)
                self.tool_positions[event.get("index")] = position
                call = {
                    "index": position,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return chunks.delta(0, {"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return chunks.delta(0, {"content": block["text"]})
            return b""
        if kind == "content_block_delta":
            return self._delta(event.get("index"), event.get("delta") or {})
        if kind == "message_delta":
            self._merge_usage(event.get("usage"))
            self.finished = True
            reason = finish_reason((event.get("delta") or {}).get("stop_reason"))
            return chunks.delta(0, {}, reason)
        if kind == "message_stop":
            out = [] if self.finished else [chunks.delta(0, {}, "stop")]
            usage = usage_from(self.usage)
            if self.include_usage and usage is not None:
                out.append(chunks.usage(usage))
            out.append(done_event())
            return b"".join(out)
        if kind == "error":
            error = event.get("error") or {}
            message = str(error.get("message") or "The upstream provider reported an error.")
            return error_event(message, str(error.get("type") or "upstream_error"))
        return b""  # ping, content_block_stop, and event types added after this was written

    def _delta(self, block_index: object, delta: dict) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self.chunks.delta(0, {"content": delta["text"]})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self.chunks.delta(0, {"reasoning_content": delta["thinking"]})
        if kind == "input_json_delta" and delta.get("partial_json"):
            position = self.tool_positions.get(block_index)
            if position is None:
                return b""
            call = {"index": position, "function": {"arguments": delta["partial_json"]}}
            return self.chunks.delta(0, {"tool_calls": [call]})
        return b""


class AnthropicAdapter:
    def request(self, route: Route, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        if endpoint != CHAT:
            raise conversion_not_implemented(PROVIDER, endpoint)
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # the stream is parsed as raw bytes
            "anthropic-version": API_VERSION,
        }
        if route.api_key:
            headers["x-api-key"] = route.api_key
        payload = chat_request({**body, "stream": stream})
        return UpstreamRequest(f"{route.base_url}/messages", headers, orjson.dumps(payload))

    def response(self, data: dict, model: str) -> dict:
        return chat_response(data, model)

    def stream(self, model: str, include_usage: bool) -> AnthropicStream:
        return AnthropicStream(model, include_usage)


ANTHROPIC = AnthropicAdapter()
