"""Google Gemini channels: OpenAI chat completions translated to generateContent and back.

Requests go to {base_url}/models/{model}:generateContent, or :streamGenerateContent?alt=sse
for streams. The key travels in the x-goog-api-key header, never in the URL (URLs get logged).
"""

import mimetypes
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import orjson

from relay.adapters import UpstreamRequest
from relay.adapters.anthropic import (
    CHAT,
    Chunks,
    SSEReader,
    completion,
    content_parts,
    conversion_not_implemented,
    function_tools,
    image_url_of,
    invalid_request,
    invalid_response,
    is_web_url,
    malformed_event,
    max_output_tokens,
    named_tool_choice,
    new_completion_id,
    openai_usage,
    parse_data_url,
    stop_sequences,
    text_of,
    tool_arguments,
    tool_call,
)
from relay.http import RelayError
from relay.routing import Route
from relay.streaming import done_event, error_event

PROVIDER = "Gemini"
FILTERED = frozenset({
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE",
})  # fmt: skip
# Gemini's Schema is a subset of OpenAPI 3.0 and refuses unknown keywords with a 400 ("Unknown
# name additionalProperties"), so OpenAI's JSON Schemas are narrowed to these.
SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems",
    "properties", "required", "propertyOrdering", "anyOf", "minimum", "maximum", "minLength",
    "maxLength", "pattern", "minProperties", "maxProperties", "default", "example",
})  # fmt: skip
MAX_SCHEMA_DEPTH = 32  # where a recursive $ref stops being unrolled
# Gemini needs a media type for a file URL; a URL without a telling extension is most often a
# photo.
DEFAULT_IMAGE_TYPE = "image/jpeg"


def finish_reason(reason: object, has_tool_calls: bool) -> str:
    # Gemini says STOP after a function call; OpenAI clients look for tool_calls.
    if has_tool_calls:
        return "tool_calls"
    if reason == "MAX_TOKENS":
        return "length"
    if reason in FILTERED:
        return "content_filter"
    return "stop"


def model_path(model: str) -> str:
    return quote(model.removeprefix("models/"), safe="")


def gemini_schema(schema: object, defs: dict | None = None, depth: int = 0) -> dict:
    """A JSON Schema in the OpenAPI subset Gemini accepts: local $refs inlined, type lists
    turned into `nullable`, `const` into a one-value enum, unknown keywords left out."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return {}
    if defs is None:
        defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return gemini_schema({**(target or {}), **rest}, defs, depth + 1)
    out: dict = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if kinds:
                out["type"] = kinds[0]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            out["anyOf"] = [gemini_schema(s, defs, depth + 1) for s in value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(s, defs, depth + 1) for name, s in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value, defs, depth + 1)
        elif key in SCHEMA_KEYS:
            out[key] = value
    return out


def _image_part(url: str) -> dict:
    inline = parse_data_url(url)
    if inline is not None:
        media_type, data = inline
        return {"inlineData": {"mimeType": media_type, "data": data}}
    if is_web_url(url):
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        return {"fileData": {"mimeType": guessed or DEFAULT_IMAGE_TYPE, "fileUri": url}}
    raise invalid_request("An image URL must be http(s) or a base64 data: URL.")


def _parts(content: object) -> list[dict]:
    parts = []
    for part in content_parts(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = str(part.get("text") or part.get("refusal") or "")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            parts.append(_image_part(image_url_of(part)))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime = f"audio/{audio.get('format') or 'wav'}"
            parts.append({"inlineData": {"mimeType": mime, "data": audio.get("data") or ""}})
        else:
            raise invalid_request(f"{PROVIDER} channels do not support '{kind}' content parts.")
    return parts


def _function_response(message: dict, names: dict[str, str]) -> dict:
    # Gemini matches a result to its call by function name; OpenAI by the call's id.
    name = names.get(str(message.get("tool_call_id"))) or message.get("name")
    if not name:
        raise invalid_request(
            "A 'tool' message must answer a tool call of an earlier assistant message."
        )
    text = text_of(message.get("content"))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def _contents(messages: list) -> tuple[list[str], list[dict]]:
    """(system texts, Gemini contents), consecutive turns of one role merged."""
    system: list[str] = []
    contents: list[dict] = []
    names: dict[str, str] = {}
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
            parts = _parts(message.get("content"))
        elif role == "assistant":
            role, parts = "model", _parts(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = (call or {}).get("function") or {}
                names[str(call.get("id"))] = function.get("name")
                args = tool_arguments(function.get("arguments"))
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
        elif role == "tool":
            role, parts = "user", [_function_response(message, names)]
        else:
            raise invalid_request(f"{PROVIDER} channels do not support the message role {role!r}.")
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _declaration(function: dict) -> dict:
    declaration = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = gemini_schema(function.get("parameters"))
    # An object without properties is refused by Gemini; a function without parameters is not.
    if parameters and not (parameters.get("type") == "object" and not parameters.get("properties")):
        declaration["parameters"] = parameters
    return declaration


def _tool_config(choice: object) -> dict | None:
    if choice is None:
        return None
    if choice == "none":
        calling = {"mode": "NONE"}
    elif choice == "auto":
        calling = {"mode": "AUTO"}
    elif choice == "required":
        calling = {"mode": "ANY"}
    else:
        calling = {"mode": "ANY", "allowedFunctionNames": [named_tool_choice(choice)]}
    return {"functionCallingConfig": calling}


def _generation_config(body: dict) -> dict:
    config: dict = {}
    fields = (
        ("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
        ("seed", "seed"), ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    )  # fmt: skip
    for openai_name, gemini_name in fields:
        if body.get(openai_name) is not None:
            config[gemini_name] = body[openai_name]
    maximum = max_output_tokens(body)
    if maximum is not None:
        config["maxOutputTokens"] = maximum
    stop = stop_sequences(body.get("stop"))
    if stop:
        config["stopSequences"] = stop
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseSchema"] = gemini_schema(schema)
    return config


def chat_request(body: dict) -> dict:
    """The Gemini generateContent body for an OpenAI chat completions body (the model goes in
    the URL)."""
    system, contents = _contents(body.get("messages") or [])
    if not contents:
        raise invalid_request(f"{PROVIDER} channels need at least one user or assistant message.")
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    functions = function_tools(body)
    if functions:
        out["tools"] = [{"functionDeclarations": [_declaration(f) for f in functions]}]
        config = _tool_config(body.get("tool_choice"))
        if config is not None:
            out["toolConfig"] = config
    generation = _generation_config(body)
    if generation:
        out["generationConfig"] = generation
    return out


def usage_from(metadata: object) -> dict | None:
    """Gemini usage in OpenAI's terms: promptTokenCount already includes the cached tokens;
    thinking is billed as output."""
    if not isinstance(metadata, dict):
        return None
    prompt = int(metadata.get("promptTokenCount") or 0) + int(
        metadata.get("toolUsePromptTokenCount") or 0
    )
    output = int(metadata.get("candidatesTokenCount") or 0) + int(
        metadata.get("thoughtsTokenCount") or 0
    )
    return openai_usage(prompt, output, int(metadata.get("cachedContentTokenCount") or 0))


def _call_id(completion_id: str, position: int) -> str:
    # Gemini gives calls no ids (or optional ones); ours derive from the response's.
    return f"call_{completion_id.removeprefix('chatcmpl-')}_{position}"


def _response_id(data: dict) -> str:
    response_id = data.get("responseId")
    return f"chatcmpl-{response_id}" if response_id else new_completion_id()


def _blocked(data: dict) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def chat_response(data: dict, model: str) -> dict:
    """An OpenAI chat.completion for a Gemini GenerateContentResponse."""
    candidates = data.get("candidates")
    completion_id = _response_id(data)
    choices = []
    if isinstance(candidates, list) and candidates:
        for position, candidate in enumerate(candidates):
            if isinstance(candidate, dict):
                choices.append(_choice(position, candidate, completion_id))
    elif _blocked(data):
        # The prompt itself was refused: no candidate at all.
        message = {"role": "assistant", "content": ""}
        choices.append(
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}
        )
    else:
        raise invalid_response()
    return completion(
        completion_id, data.get("modelVersion") or model, choices,
        usage_from(data.get("usageMetadata")),
    )  # fmt: skip


def _choice(position: int, candidate: dict, completion_id: str) -> dict:
    text, reasoning, calls = [], [], []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            function = part["functionCall"]
            call_id = function.get("id") or _call_id(completion_id, len(calls))
            calls.append(tool_call(call_id, function.get("name"), function.get("args")))
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") else text).append(part["text"])
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "index": candidate.get("index", position),
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
    }


@dataclass
class _ChoiceState:
    tool_calls: int = 0
    finished: bool = False


class GeminiStream:
    """Gemini's SSE stream (one GenerateContentResponse per event) in, OpenAI chunks out.

    Gemini has no end-of-stream event: [DONE] goes out when its stream ends (close()), and only
    if a finish reason was seen, so a stream that stops early stays visibly cut short.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.reader = SSEReader()
        self.chunks = Chunks(model)
        self.include_usage = include_usage
        self.choices: dict[int, _ChoiceState] = {}
        self.usage: dict | None = None
        self.started = False
        self.finished = False
        self.broken = False

    def feed(self, data: bytes) -> bytes:
        return self._translate(self.reader.feed(data))

    def close(self) -> bytes:
        out = self._translate(self.reader.close())
        if self.broken or not self.finished:
            return out
        tail = [out]
        if self.include_usage and self.usage is not None:
            tail.append(self.chunks.usage(self.usage))
        tail.append(done_event())
        return b"".join(tail)

    def _translate(self, events: list[tuple[str, bytes]]) -> bytes:
        out = []
        for _, payload in events:
            if self.broken:
                break
            out.append(self._event(payload))
        return b"".join(out)

    def _event(self, payload: bytes) -> bytes:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self.broken = True
            return malformed_event(payload)
        error = data.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "The upstream provider reported an error.")
            return error_event(message, str(error.get("status") or "upstream_error"))
        chunks = self.chunks
        if not self.started:
            self.started = True
            chunks.id = _response_id(data)
            chunks.model = data.get("modelVersion") or chunks.model
        usage = usage_from(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage  # cumulative: the last one counts
        out = []
        candidates = data.get("candidates")
        if isinstance(candidates, list):
            for position, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    out.extend(self._candidate(candidate.get("index", position), candidate))
        elif _blocked(data):
            out.extend(self._start(0))
            out.append(chunks.delta(0, {}, "content_filter"))
            self.finished = True
        return b"".join(out)

    def _start(self, index: int) -> list[bytes]:
        if index in self.choices:
            return []
        self.choices[index] = _ChoiceState()
        return [self.chunks.delta(index, {"role": "assistant", "content": ""})]

    def _candidate(self, index: int, candidate: dict) -> list[bytes]:
        chunks = self.chunks
        out = self._start(index)
        state = self.choices[index]
        for part in (candidate.get("content") or {}).get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("functionCall"), dict):
                function = part["functionCall"]
                position = state.tool_calls
                state.tool_calls += 1
                call_id = function.get("id") or _call_id(chunks.id, position)
                # Gemini sends a call whole; OpenAI clients expect the name, then arguments.
                first = {
                    "index": position,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": function.get("name"), "arguments": ""},
                }
                arguments = orjson.dumps(function.get("args") or {}).decode()
                rest = {"index": position, "function": {"arguments": arguments}}
                out.append(chunks.delta(index, {"tool_calls": [first]}))
                out.append(chunks.delta(index, {"tool_calls": [rest]}))
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                out.append(chunks.delta(index, {key: part["text"]}))
        reason = candidate.get("finishReason")
        if reason and not state.finished:
            state.finished = self.finished = True
            out.append(chunks.delta(index, {}, finish_reason(reason, state.tool_calls > 0)))
        return out


class GeminiAdapter:
    def request(self, route: Route, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        if endpoint != CHAT:
            raise conversion_not_implemented(PROVIDER, endpoint)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RelayError(400, "You must provide a model parameter.", param="model")
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if route.api_key:
            headers["x-goog-api-key"] = route.api_key
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{route.base_url}/models/{model_path(model)}:{method}"
        return UpstreamRequest(url, headers, orjson.dumps(chat_request(body)))

    def response(self, data: dict, model: str) -> dict:
        return chat_response(data, model)

    def stream(self, model: str, include_usage: bool) -> GeminiStream:
        return GeminiStream(model, include_usage)


GEMINI = GeminiAdapter()
