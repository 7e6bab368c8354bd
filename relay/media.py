"""Images, audio and moderations: the upstream part of each media call, and what it costs.

Nothing here authenticates, holds, settles or writes an HTTP response: relay/endpoints.py
wraps these functions for `/v1/...`, and an async job (a Celery task) can run the same call
with its own hold and settlement through billing's services. The interface, kept stable:

    KINDS: dict[str, MediaKind]      # by name: "images.generations", "images.edits",
                                     # "audio.speech", "audio.transcriptions",
                                     # "audio.translations", "moderations"
    from_json(kind, body: dict) -> MediaRequest
    from_form(kind, form: multipart.Form) -> MediaRequest
    media_request(kind, body: dict, files: list[multipart.Upload] = ()) -> MediaRequest
        # A checked request: `body` holds the fields (typed: n an int, speed a float…),
        # `files` the uploads as bytes. Bad parameters raise RelayError(400, param=…).
    check_model(kind, model: routing.ModelInfo) -> None
        # RelayError 400 model_not_supported when the model cannot serve this endpoint.
    routes_for(kind, routes: list[routing.Route]) -> list[routing.Route]
        # The channels that can serve it (OpenAI-type); 400 when none of the model's can.
        # `routes` is routing.plan(model.model_id, attempts) (the catalog snapshot loaded by
        # routing.refresh(), in a thread: it reads the database); the model is
        # routing.current().models[model_id].
    quote(request: MediaRequest, model) -> Quote
        # The worst case: units (metering.MediaUnits) and cost_micros — what to hold.
    await run(request, model, routes, *, spawn=None, on_attempt=None) -> MediaResult
        # The call upstream with failover (audio.speech collected whole). MediaResult holds
        # content (bytes as the client gets them), content_type, data (the JSON answer or
        # None), units used and cost_micros (never above quote(...).cost_micros).
    await open_speech(request, model, routes, *, spawn=None, on_attempt=None) -> SpeechStream
        # audio.speech as a stream: its first bytes are in (failures up to there fail over);
        # iterate `chunks()` for the rest (BrokenStream if the upstream breaks off), close().

Failures raise RelayError (status, code, message as the relay answers them): a retryable
upstream failure moves to the next route first. `spawn` runs the channels' health
bookkeeping in the background (the relay passes its app's; None keeps the tasks here).

Pricing (the model's price_unit; hold = worst case, settlement = what was used):
- images: per image, the "<size>/<quality>" variant price, else "<size>", else unit_price;
  held for n images, charged for the images returned. price_unit "request": per call.
- audio.speech ("mchar"): per 1M characters of `input`, held and charged in full once any
  audio has been delivered (a stream broken later is charged in full: the upstream gave no
  count of what it produced), free if it failed before the first byte.
- transcriptions and translations ("second"): a WAV upload's duration is read from its header
  and is both the hold and the charge (whatever response_format). Other formats are held for
  their size at MIN_AUDIO_BYTES_PER_SECOND (8 kbit/s, the lowest speech bit rate in common
  use) and charged for the `duration` the upstream reports (never more than the hold): the
  relay asks the upstream for verbose_json and answers the client's format (json, text, srt,
  vtt) from it. An upstream that reports no duration is charged the hold.
- moderations: per request ("request"), or per 1M input tokens ("mtok", counted as for
  embeddings, held with the usual margin).
"""

import asyncio
import math
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import orjson

from relay import metering, upstream
from relay.adapters import UpstreamRequest
from relay.failover import failover
from relay.http import RelayError
from relay.multipart import Form, MultipartError, Upload, encode
from relay.routing import ModelInfo, Route
from relay.upstream import BrokenStream, UpstreamFailure
from tokenbyte.money import ceil_div

# Channel types whose API is OpenAI's (the mock upstream's too): media passes through.
OPENAI_TYPES = frozenset({"openai", "mock"})
MAX_IMAGES = 10
MAX_SPEECH_CHARACTERS = 4096
# Audio of an unknown format is held as if it were this sparse (8 kbit/s).
MIN_AUDIO_BYTES_PER_SECOND = 1_000
IMAGE_FORMATS = ("url", "b64_json")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

Spawn = Callable[[Awaitable], object]
OnAttempt = Callable[[int, Route], None]


@dataclass(frozen=True)
class MediaKind:
    name: str  # also the log's call type and endpoint
    path: str  # the public path
    upstream_path: str  # appended to the channel's base URL
    multipart: bool
    # The catalog models that may serve it (calls.resolve_model reads `call_types` and `path`).
    call_types: frozenset[str]
    price_units: frozenset[str]
    capability: str = ""  # a capability tag the model must have instead of a call type


IMAGES_GENERATIONS = MediaKind(
    "images.generations", "/v1/images/generations", "/images/generations", False,
    frozenset({"image"}), frozenset({"image", "request"}),
)  # fmt: skip
IMAGES_EDITS = MediaKind(
    "images.edits", "/v1/images/edits", "/images/edits", True,
    frozenset({"image"}), frozenset({"image", "request"}),
)  # fmt: skip
AUDIO_SPEECH = MediaKind(
    "audio.speech", "/v1/audio/speech", "/audio/speech", False,
    frozenset({"audio"}), frozenset({"mchar", "request"}),
)  # fmt: skip
AUDIO_TRANSCRIPTIONS = MediaKind(
    "audio.transcriptions", "/v1/audio/transcriptions", "/audio/transcriptions", True,
    frozenset({"audio"}), frozenset({"second", "request"}),
)  # fmt: skip
AUDIO_TRANSLATIONS = MediaKind(
    "audio.translations", "/v1/audio/translations", "/audio/translations", True,
    frozenset({"audio"}), frozenset({"second", "request"}),
)  # fmt: skip
# The catalog has no moderation call type: a model serves /v1/moderations when it carries the
# "moderation" capability tag (whatever its call type).
MODERATIONS = MediaKind(
    "moderations", "/v1/moderations", "/moderations", False,
    frozenset({"chat", "completion", "embedding", "image", "audio"}),
    frozenset({"request", "mtok"}), capability="moderation",
)  # fmt: skip
KINDS = {
    kind.name: kind
    for kind in (
        IMAGES_GENERATIONS, IMAGES_EDITS, AUDIO_SPEECH, AUDIO_TRANSCRIPTIONS,
        AUDIO_TRANSLATIONS, MODERATIONS,
    )
}  # fmt: skip
PATHS = {kind.path: kind for kind in KINDS.values()}


@dataclass(frozen=True)
class MediaRequest:
    kind: MediaKind
    body: dict  # the fields, typed
    files: tuple[Upload, ...] = ()

    def loggable_params(self) -> dict:
        """The request's parameters for the log (no prompt, input or file contents)."""
        params = {
            k: v for k, v in self.body.items() if k not in ("prompt", "input", "instructions")
        }
        if isinstance(self.body.get("input"), list):
            params["input_count"] = len(self.body["input"])
        if self.files:
            params["files"] = [
                {"field": f.field, "filename": f.filename[:100], "bytes": len(f.data)}
                for f in self.files
            ]
        return params


@dataclass(frozen=True)
class Quote:
    units: metering.MediaUnits
    cost_micros: int


@dataclass
class MediaResult:
    content: bytes
    content_type: str
    data: dict | None
    units: metering.MediaUnits
    cost_micros: int
    route: Route | None = None


# --- parsing -------------------------------------------------------------------------------


def _bad(message: str, param: str | None, code: str = "invalid_value") -> RelayError:
    return RelayError(400, message, param=param, code=code)


def _missing(name: str) -> RelayError:
    return _bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")


def _string(body: dict, name: str, *, required: bool = False, choices=None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        raise _bad(f"'{name}' must be a string.", name, "invalid_type")
    if required and not value:
        raise _missing(name)
    if "\x00" in value:
        raise _bad(f"'{name}' must not contain NUL characters.", name)
    if choices is not None and value not in choices:
        raise _bad(f"'{name}' must be one of {', '.join(choices)} (got '{value}').", name)
    return value


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False):
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise _bad(f"'{name}' must be {kind}.", name, "invalid_type")
    if not low <= value <= high or (isinstance(value, float) and math.isnan(value)):
        raise _bad(f"'{name}' must be between {low:g} and {high:g} (got {value}).", name)
    return value


# Form fields that are numbers (multipart sends every value as text).
_FORM_NUMBERS = {"n": int, "temperature": float, "speed": float, "output_compression": int}


def from_form(kind: MediaKind, form: Form) -> MediaRequest:
    body: dict = {}
    for name, values in form.fields.items():
        if name.endswith("[]"):
            body[name] = list(values)
            continue
        value = values[-1]
        convert = _FORM_NUMBERS.get(name)
        if convert is not None:
            try:
                body[name] = convert(value)
            except ValueError:
                kind_name = "an integer" if convert is int else "a number"
                raise _bad(f"'{name}' must be {kind_name}.", name, "invalid_type") from None
        elif name == "stream":
            body[name] = value.lower() == "true"
        else:
            body[name] = value
    return media_request(kind, body, form.files)


def from_json(kind: MediaKind, body: dict) -> MediaRequest:
    return media_request(kind, body)


def parse_form(body: bytes, content_type: str) -> Form:
    """The multipart body, or 400 with what was wrong."""
    from relay.multipart import parse

    if not content_type.lower().startswith("multipart/form-data"):
        raise _bad(
            "This endpoint takes multipart/form-data (a file upload).", None, "invalid_request"
        )
    try:
        return parse(body, content_type)
    except MultipartError as exc:
        raise _bad(f"Malformed multipart body: {exc}", None, "invalid_multipart") from exc


def media_request(kind: MediaKind, body: dict, files: Iterable[Upload] = ()) -> MediaRequest:
    """Check the fields this relay reads (400 with `param`); the rest pass through."""
    files = tuple(files)
    if "model" in body and not isinstance(body["model"], str):
        raise _bad("'model' must be a string.", "model", "invalid_type")
    if kind in (IMAGES_GENERATIONS, IMAGES_EDITS):
        _string(body, "prompt", required=True)
        _number(body, "n", 1, MAX_IMAGES, integer=True)
        _string(body, "size")
        _string(body, "quality")
        _string(body, "response_format", choices=IMAGE_FORMATS)
        if kind is IMAGES_EDITS:
            if not [f for f in files if f.field in ("image", "image[]")]:
                raise _missing("image")
            if len([f for f in files if f.field == "mask"]) > 1:
                raise _bad("Send at most one 'mask'.", "mask")
    elif kind is AUDIO_SPEECH:
        text = _string(body, "input", required=True)
        if len(text) > MAX_SPEECH_CHARACTERS:
            raise _bad(
                f"'input' is {len(text)} characters long; the most is {MAX_SPEECH_CHARACTERS}.",
                "input",
            )
        voice = body.get("voice")
        if voice is None or voice == "":
            raise _missing("voice")
        if not isinstance(voice, str | dict):
            raise _bad("'voice' must be a string or an object.", "voice", "invalid_type")
        _string(body, "response_format", choices=SPEECH_FORMATS)
        _number(body, "speed", 0.25, 4.0)
        if body.get("stream_format", "audio") != "audio":
            raise _bad("Only stream_format 'audio' is supported.", "stream_format")
    elif kind in (AUDIO_TRANSCRIPTIONS, AUDIO_TRANSLATIONS):
        uploads = [f for f in files if f.field == "file"]
        if not uploads:
            raise _missing("file")
        if len(uploads) > 1:
            raise _bad("Send one 'file'.", "file")
        if not uploads[0].data:
            raise _bad("The uploaded file is empty.", "file")
        _string(body, "response_format", choices=TRANSCRIPT_FORMATS)
        _string(body, "language")
        _string(body, "prompt")
        _number(body, "temperature", 0, 1)
        if body.get("stream"):
            raise _bad("Streamed transcriptions are not supported by this relay.", "stream")
    elif kind is MODERATIONS:
        value = body.get("input")
        if value is None or value in ("", []):
            raise _missing("input")
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, str | dict):
                    raise _bad(
                        "'input' items must be strings or objects.", f"input[{index}]",
                        "invalid_type",
                    )  # fmt: skip
        elif not isinstance(value, str):
            raise _bad("'input' must be a string or an array.", "input", "invalid_type")
    return MediaRequest(kind=kind, body=body, files=files)


# --- models, routes and prices --------------------------------------------------------------


def check_model(kind: MediaKind, model: ModelInfo) -> None:
    fits = (
        kind.capability in model.capabilities
        if kind.capability
        else model.call_type in kind.call_types
    )
    if not fits or model.price_unit not in kind.price_units:
        raise RelayError(
            400, f"The model '{model.model_id}' cannot be used with {kind.path}.",
            code="model_not_supported", param="model",
        )  # fmt: skip


def routes_for(kind: MediaKind, routes: list[Route]) -> list[Route]:
    usable = [route for route in routes if route.type in OPENAI_TYPES]
    if routes and not usable:
        raise RelayError(
            400, f"{kind.path} is not supported by this model's provider.",
            code="unsupported_by_provider", param="model",
        )  # fmt: skip
    return usable


def wav_duration_ms(data: bytes) -> int | None:
    """A WAV file's duration from its header (rounded up to the millisecond); None when the
    bytes are not a WAV file this can read. A data chunk longer than the bytes present (a
    truncated file, or a streamed WAV's 0xFFFFFFFF) counts what is there."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position, byte_rate = 12, 0
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], struct.unpack_from("<I", data, position + 4)[0]
        start = position + 8
        if chunk == b"fmt ":
            if size < 16 or start + 16 > len(data):
                return None
            byte_rate = struct.unpack_from("<I", data, start + 8)[0]
        elif chunk == b"data":
            if not byte_rate:
                return None
            size = min(size, len(data) - start)
            return ceil_div(size * 1000, byte_rate)
        position = start + size + (size & 1)
    return None


def _upload(request: MediaRequest) -> Upload:
    return next(f for f in request.files if f.field == "file")


def _moderation_tokens(value: object) -> int:
    if isinstance(value, str):
        return metering.count_text(value)
    total = 0
    for item in value if isinstance(value, list) else ():
        if isinstance(item, str):
            total += metering.count_text(item)
        elif isinstance(item, dict):
            if item.get("type") == "text":
                total += metering.count_text(str(item.get("text", "")))
            else:
                total += metering.TOKENS_PER_IMAGE
    return total


def quote(request: MediaRequest, model: ModelInfo) -> Quote:
    """The worst case of the call: what it is held for."""
    kind, body = request.kind, request.body
    if kind in (IMAGES_GENERATIONS, IMAGES_EDITS):
        units = metering.MediaUnits(
            images=body.get("n") or 1,
            image_price=metering.image_price(model, body.get("size"), body.get("quality")),
        )
    elif kind is AUDIO_SPEECH:
        units = metering.MediaUnits(characters=len(body["input"]))
    elif kind in (AUDIO_TRANSCRIPTIONS, AUDIO_TRANSLATIONS):
        data = _upload(request).data
        duration = wav_duration_ms(data)
        if duration is None:
            duration = ceil_div(len(data), MIN_AUDIO_BYTES_PER_SECOND) * 1000
        units = metering.MediaUnits(milliseconds=duration)
    else:
        tokens = 0
        if model.price_unit == "mtok":
            tokens = metering.with_margin(_moderation_tokens(body["input"]))
        units = metering.MediaUnits(tokens=tokens)
    return Quote(units=units, cost_micros=metering.media_cost_micros(model, units))


# --- upstream --------------------------------------------------------------------------------


_background: set[asyncio.Future] = set()


def _keep(coroutine: Awaitable) -> None:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _invalid_answer() -> UpstreamFailure:
    return UpstreamFailure(
        502, "The upstream provider sent an invalid response.",
        code="invalid_upstream_response", retryable=True,
    )  # fmt: skip


def _form_fields(body: dict) -> list[tuple[str, str]]:
    fields = []
    for name, value in body.items():
        for item in value if isinstance(value, list) else (value,):
            if item is None:
                continue
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, str):
                text = item
            else:
                text = orjson.dumps(item).decode()
            fields.append((name, text))
    return fields


def upstream_request(
    request: MediaRequest, route: Route, model: ModelInfo, body: dict | None = None
) -> UpstreamRequest:
    """The request as the channel receives it: the model name mapped, the rest as sent."""
    body = dict(request.body if body is None else body)
    body["model"] = route.upstream_model(model.model_id)
    headers = {"accept-encoding": "identity"}
    if route.api_key:
        headers["authorization"] = f"Bearer {route.api_key}"
    url = f"{route.base_url}{request.kind.upstream_path}"
    if request.kind.multipart:
        content, content_type = encode(
            _form_fields(body), list(request.files), f"tokenbyte-{os.urandom(12).hex()}"
        )
        headers["content-type"] = content_type
    else:
        content = orjson.dumps(body)
        headers["content-type"] = JSON_CONTENT_TYPE
    return UpstreamRequest(url, headers, content)


async def _fetch(
    request: MediaRequest, model: ModelInfo, route: Route, body: dict | None
) -> tuple[bytes, str]:
    answer = await upstream.send(upstream_request(request, route, model, body), route)
    try:
        if answer.status >= 400:
            raise await upstream.failure_from_answer(answer)
        content = await answer.read()
        content_type = answer.header("content-type") or JSON_CONTENT_TYPE
    finally:
        await answer.close()
    return content, content_type


def _json(content: bytes) -> dict:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise _invalid_answer() from None
    if not isinstance(data, dict):
        raise _invalid_answer()
    return data


async def run(
    request: MediaRequest,
    model: ModelInfo,
    routes: list[Route],
    *,
    spawn: Spawn | None = None,
    on_attempt: OnAttempt | None = None,
) -> MediaResult:
    """The call upstream, with failover; see the module docstring."""
    kind = request.kind
    if kind is AUDIO_SPEECH:
        return await _speech_collected(request, model, routes, spawn, on_attempt)
    held = quote(request, model)
    upstream_body, convert_to = _transcript_plan(request)

    async def attempt(route: Route) -> MediaResult:
        content, content_type = await _fetch(request, model, route, upstream_body)
        if kind in (AUDIO_TRANSCRIPTIONS, AUDIO_TRANSLATIONS):
            result = _transcript_result(request, content, content_type, held, convert_to)
        else:
            data = _json(content)
            if kind is MODERATIONS:
                if not isinstance(data.get("results"), list):
                    raise _invalid_answer()
                units = metering.MediaUnits(
                    tokens=_moderation_tokens(request.body["input"])
                    if model.price_unit == "mtok"
                    else 0
                )
            else:
                images = data.get("data")
                if not isinstance(images, list):
                    raise _invalid_answer()
                units = metering.MediaUnits(
                    images=min(len(images), held.units.images),
                    image_price=held.units.image_price,
                )
            result = MediaResult(content, JSON_CONTENT_TYPE, data, units, 0)
        result.cost_micros = min(metering.media_cost_micros(model, result.units), held.cost_micros)
        result.route = route
        return result

    _, result = await failover(
        routes, attempt, on_attempt=on_attempt or _ignore, spawn=spawn or _keep
    )
    return result


def _ignore(*_: object) -> None:
    return None


# --- transcriptions and translations ----------------------------------------------------------


def _transcript_plan(request: MediaRequest) -> tuple[dict | None, str | None]:
    """(the body to send upstream, the format to convert its answer to), or (None, None) when
    the body goes as it is: a WAV's duration is known, and so is a verbose_json's."""
    if request.kind not in (AUDIO_TRANSCRIPTIONS, AUDIO_TRANSLATIONS):
        return None, None
    wanted = request.body.get("response_format") or "json"
    if wav_duration_ms(_upload(request).data) is not None or wanted == "verbose_json":
        return None, None
    return {**request.body, "response_format": "verbose_json"}, wanted


def _transcript_result(
    request: MediaRequest, content: bytes, content_type: str, held: Quote, convert_to: str | None
) -> MediaResult:
    wanted = request.body.get("response_format") or "json"
    wav = wav_duration_ms(_upload(request).data)
    if wav is not None:
        # The duration was read from the file: the answer passes through as it came.
        data = _json(content) if wanted in ("json", "verbose_json") else None
        units = metering.MediaUnits(milliseconds=wav)
        return MediaResult(content, content_type, data, units, 0)
    data = _json(content)
    if not isinstance(data.get("text"), str):
        raise _invalid_answer()
    duration = _reported_ms(data)
    if duration is None:
        duration = held.units.milliseconds
    units = metering.MediaUnits(milliseconds=min(duration, held.units.milliseconds))
    if convert_to is None:  # the client asked for verbose_json
        return MediaResult(content, JSON_CONTENT_TYPE, data, units, 0)
    if convert_to == "json":
        out = {
            "text": data["text"],
            "usage": {"type": "duration", "seconds": ceil_div(units.milliseconds, 1000)},
        }
        return MediaResult(orjson.dumps(out), JSON_CONTENT_TYPE, out, units, 0)
    text = _render_transcript(data, convert_to, units.milliseconds)
    return MediaResult(text.encode(), TEXT_CONTENT_TYPE, None, units, 0)


def _reported_ms(data: dict) -> int | None:
    duration = data.get("duration")
    if duration is None and isinstance(data.get("usage"), dict):
        duration = data["usage"].get("seconds")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
        return None
    if not math.isfinite(duration):
        return None
    return math.ceil(duration * 1000)


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _render_transcript(data: dict, fmt: str, duration_ms: int) -> str:
    """text, srt or vtt from a verbose_json answer (its segments, else one cue for all)."""
    text = data["text"]
    if fmt == "text":
        return text + "\n"
    segments = [s for s in data.get("segments") or () if isinstance(s, dict)]
    cues = [
        (float(s.get("start") or 0), float(s.get("end") or 0), str(s.get("text", "")).strip())
        for s in segments
    ] or [(0.0, duration_ms / 1000, text.strip())]
    if fmt == "srt":
        blocks = [
            f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{line}\n"
            for i, (start, end, line) in enumerate(cues, 1)
        ]
        return "\n".join(blocks) + "\n"
    blocks = [
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{line}\n"
        for start, end, line in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks) + "\n"


# --- speech ----------------------------------------------------------------------------------


@dataclass
class SpeechStream:
    """An upstream speech answer whose first bytes are in."""

    answer: upstream.Answer
    route: Route
    content_type: str
    first: bytes
    units: metering.MediaUnits
    cost_micros: int  # the whole input: what a speech call costs once any audio was delivered
    _rest: AsyncIterator[bytes] | None = field(default=None, repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """All the audio, the first bytes included; BrokenStream when the upstream breaks."""
        yield self.first
        if self._rest is not None:
            async for data in self._rest:
                if data:
                    yield data

    async def close(self) -> None:
        await self.answer.close()


async def open_speech(
    request: MediaRequest,
    model: ModelInfo,
    routes: list[Route],
    *,
    spawn: Spawn | None = None,
    on_attempt: OnAttempt | None = None,
) -> SpeechStream:
    held = quote(request, model)
    wanted = request.body.get("response_format") or "mp3"

    async def attempt(route: Route) -> SpeechStream:
        answer = await upstream.send(upstream_request(request, route, model), route)
        if answer.status >= 400:
            try:
                raise await upstream.failure_from_answer(answer)
            finally:
                await answer.close()
        rest = answer.chunks()
        first = b""
        try:
            while not first:
                first = await rest.__anext__()
        except StopAsyncIteration:
            await answer.close()
            raise UpstreamFailure(
                502, "The upstream provider sent no audio.",
                code="invalid_upstream_response", retryable=True,
            ) from None  # fmt: skip
        except BrokenStream as exc:
            await answer.close()
            raise exc.failure or upstream.failure_from_exception(exc) from exc
        content_type = answer.header("content-type") or SPEECH_CONTENT_TYPES[wanted]
        if content_type.startswith(JSON_CONTENT_TYPE):
            await answer.close()
            raise _invalid_answer()
        return SpeechStream(
            answer, route, content_type, first, held.units, held.cost_micros, _rest=rest
        )

    _, stream = await failover(
        routes, attempt, on_attempt=on_attempt or _ignore, spawn=spawn or _keep
    )
    return stream


async def _speech_collected(
    request: MediaRequest,
    model: ModelInfo,
    routes: list[Route],
    spawn: Spawn | None,
    on_attempt: OnAttempt | None,
) -> MediaResult:
    stream = await open_speech(request, model, routes, spawn=spawn, on_attempt=on_attempt)
    parts: list[bytes] = []
    try:
        async for data in stream.chunks():
            parts.append(data)
    except BrokenStream as exc:
        raise RelayError(
            502, f"The upstream provider's audio broke off: {exc.name}.",
            code="upstream_stream_interrupted",
        ) from exc  # fmt: skip
    finally:
        await stream.close()
    return MediaResult(
        b"".join(parts), stream.content_type, None, stream.units, stream.cost_micros,
        stream.route,
    )  # fmt: skip
