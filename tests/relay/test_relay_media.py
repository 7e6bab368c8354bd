"""Images, audio and moderations through the relay, with the official openai SDK: each endpoint
answered in OpenAI's format, held for the worst case, charged exactly, refused and failed over
as chat is."""

import base64
import io
import struct
import time
import wave

import httpx
import openai
import pytest

from billing.models import Hold
from billing.selectors import wallet_ledger_sum_micros
from catalog.services import channel_create
from mockupstream.server import MOCK_PNG
from tests.factories import ModelFactory
from tests.relay.conftest import wait_for, wait_for_logs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

IMAGE_PRICE = 40_000  # micro-USD per image, sizes without a variant
IMAGE_VARIANTS = {"1024x1024": 40_000, "1024x1024/hd": 80_000, "1792x1024": 80_000}
SPEECH_PRICE = 15_000_000  # micro-USD per 1M characters
SECOND_PRICE = 100  # micro-USD per second of audio ($0.006 a minute)
MODERATION_PRICE = 1_000  # micro-USD per request
MODERATION_TOKEN_PRICE = 1_000_000  # micro-USD per 1M input tokens
MEDIA_MODELS = ["img-test", "tts-test", "whisper-test", "mod-test", "mod-tok"]


@pytest.fixture
def relay(request):
    """The relay on its SQL path; tests parametrized with "orm" run on its ORM path as well."""
    return request.getfixturevalue(f"relay_server_{getattr(request, 'param', 'sql')}")


@pytest.fixture
def media_models(transactional_db):
    ModelFactory(
        model_id="img-test", call_type="image", price_unit="image",
        unit_price_micros=IMAGE_PRICE, unit_price_variants=IMAGE_VARIANTS,
    )  # fmt: skip
    ModelFactory(
        model_id="tts-test", call_type="audio", price_unit="mchar", unit_price_micros=SPEECH_PRICE
    )
    ModelFactory(
        model_id="whisper-test", call_type="audio", price_unit="second",
        unit_price_micros=SECOND_PRICE,
    )  # fmt: skip
    ModelFactory(
        model_id="mod-test", call_type="embedding", price_unit="request",
        unit_price_micros=MODERATION_PRICE, capabilities=["moderation"],
    )  # fmt: skip
    ModelFactory(
        model_id="mod-tok", call_type="embedding", price_unit="mtok",
        input_price_micros_per_mtok=MODERATION_TOKEN_PRICE, capabilities=["moderation"],
    )  # fmt: skip


def media_channel(mock, name="media", models=MEDIA_MODELS, **kwargs):
    return channel_create(
        name=name, type="mock", base_url=mock.base_url, model_ids=models, **kwargs
    )


@pytest.fixture
def account(make_account, media_models, mock):
    media_channel(mock)
    return make_account("10", channel=False)


def books_balance(account, charged: int) -> None:
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    assert account.balance() == 10_000_000 - charged
    assert account.balance() == wallet_ledger_sum_micros(wallet=account.wallet)
    account.wallet.refresh_from_db()
    assert account.wallet.held_micros == 0


def make_wav(milliseconds: int, rate: int = 8_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * (rate * milliseconds // 1000))
    return out.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def raw_post(relay, key: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{relay.url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30, **kwargs
    )


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relay", ["sql", "orm"], indirect=True)
def test_two_hd_images_are_priced_by_their_size_and_quality(account):
    result = account.client.images.generate(
        model="img-test", prompt="a lighthouse at dusk", n=2, size="1024x1024", quality="hd",
        response_format="b64_json",
    )  # fmt: skip

    assert len(result.data) == 2
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (8, 8)
    (log,) = wait_for_logs(account, 1)
    assert (log.call_type, log.endpoint, log.status_code) == (
        "images.generations", "images.generations", 200,
    )  # fmt: skip
    assert log.cost_micros == 2 * 80_000
    assert log.request_params["n"] == 2
    assert log.request_params["size"] == "1024x1024"
    assert log.request_params["quality"] == "hd"
    assert log.request_params["images"] == 2
    assert "prompt" not in log.request_params
    books_balance(account, 160_000)


def test_an_image_of_a_size_without_a_variant_costs_the_unit_price_and_its_url_serves_a_png(
    account,
):
    result = account.client.images.generate(model="img-test", prompt="a cat", size="512x512")

    (image,) = result.data
    assert png_size(httpx.get(image.url, timeout=5).content) == (8, 8)
    (log,) = wait_for_logs(account, 1)
    assert log.cost_micros == IMAGE_PRICE
    books_balance(account, IMAGE_PRICE)


def test_an_image_edit_uploads_the_file_with_the_mapped_model(make_account, media_models, mock):
    media_channel(mock, model_mapping={"img-test": "gpt-image-1"})
    account = make_account("10", channel=False)

    result = account.client.images.edit(
        model="img-test", image=("photo.png", MOCK_PNG, "image/png"), prompt="add a hat",
        size="1792x1024", response_format="b64_json",
    )  # fmt: skip

    assert png_size(base64.b64decode(result.data[0].b64_json)) == (8, 8)
    sent = mock.last_request
    assert sent["path"] == "/v1/images/edits"
    assert sent["json"]["model"] == "gpt-image-1"
    assert sent["json"]["prompt"] == "add a hat"
    assert sent["json"]["_files"] == [
        {"field": "image", "filename": "photo.png", "content_type": "image/png",
         "size": len(MOCK_PNG)},
    ]  # fmt: skip
    (log,) = wait_for_logs(account, 1)
    assert (log.call_type, log.cost_micros, log.upstream_model) == (
        "images.edits", 80_000, "gpt-image-1",
    )  # fmt: skip
    assert log.request_params["files"] == [
        {"field": "image", "filename": "photo.png", "bytes": len(MOCK_PNG)}
    ]
    books_balance(account, 80_000)


# --- speech -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relay", ["sql", "orm"], indirect=True)
def test_speech_streams_a_valid_wav_charged_per_character(account):
    text = "Hello world"
    with account.client.audio.speech.with_streaming_response.create(
        model="tts-test", voice="alloy", input=text, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        pieces = list(response.iter_bytes())

    audio = b"".join(pieces)
    with wave.open(io.BytesIO(audio)) as wav:
        assert wav.getnframes() / wav.getframerate() == pytest.approx(len(text) * 0.02)
    (log,) = wait_for_logs(account, 1)
    assert (log.call_type, log.status_code, log.is_stream) == ("audio.speech", 200, True)
    # ceil(11 characters × $15 per 1M characters) = 165 micro-USD
    assert log.cost_micros == 165
    assert log.request_params["characters"] == 11
    assert log.request_params["voice"] == "alloy"
    assert "input" not in log.request_params
    books_balance(account, 165)


def test_speech_longer_than_4096_characters_is_refused_and_not_charged(account):
    with pytest.raises(openai.BadRequestError) as excinfo:
        account.client.audio.speech.create(model="tts-test", voice="alloy", input="a" * 4097)

    assert excinfo.value.body["param"] == "input"
    assert account.logs().count() == 0
    books_balance(account, 0)


def test_a_speech_stream_broken_midway_is_charged_its_whole_input(make_account, media_models, mock):
    media_channel(mock, model_mapping={"tts-test": "mock-fault-drop"})
    account = make_account("10", channel=False)

    with account.client.audio.speech.with_streaming_response.create(
        model="tts-test", voice="alloy", input="Hello world", response_format="wav"
    ) as response:
        audio = b"".join(response.iter_bytes())

    assert 0 < len(audio) < len(make_wav(220))
    (log,) = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    assert log.cost_micros == 165
    books_balance(account, 165)


def test_a_client_that_hangs_up_before_the_audio_pays_nothing(account, mock):
    mock.latency_ms = 3000
    client = account.client.with_options(timeout=0.5)

    with pytest.raises(openai.APITimeoutError):
        client.audio.speech.create(model="tts-test", voice="alloy", input="Hello")

    (log,) = wait_for_logs(account, 1, timeout=10)
    assert (log.status_code, log.error_code, log.cost_micros) == (499, "client_disconnected", 0)
    books_balance(account, 0)


# --- transcriptions and translations ----------------------------------------------------------


def test_a_wav_transcription_costs_its_duration_read_from_the_header(account, mock):
    audio = make_wav(2500)

    result = account.client.audio.transcriptions.create(
        model="whisper-test", file=("speech.wav", audio, "audio/wav")
    )

    assert result.text == f"Mock transcript of {len(audio)} bytes."
    assert mock.last_request["json"].get("response_format") is None  # passed through as sent
    (log,) = wait_for_logs(account, 1)
    assert log.call_type == "audio.transcriptions"
    assert log.request_params["seconds"] == 2.5
    assert log.cost_micros == 2500 * SECOND_PRICE // 1000 == 250
    books_balance(account, 250)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations
@pytest.mark.parametrize("relay", ["sql", "orm"], indirect=True)
def test_a_translation_of_another_format_is_charged_the_upstreams_duration(account, mock):
    audio = bytes(range(256)) * 160  # 40,960 bytes, not WAV: the mock says 2.56 s

    text = account.client.audio.translations.create(
        model="whisper-test", file=("speech.mp3", audio, "audio/mpeg"), response_format="text"
    )

    assert text == f"Mock transcript of {len(audio)} bytes.\n"
    assert mock.last_request["json"]["response_format"] == "verbose_json"
    (log,) = wait_for_logs(account, 1)
    assert log.call_type == "audio.translations"
    # Held for 41 s (1 kB a second), charged the 2.56 s the upstream reported.
    assert log.request_params["seconds"] == 41.0
    assert log.request_params["used"] == {"seconds": 2.56}
    assert log.cost_micros == 256
    books_balance(account, 256)


def test_a_transcription_asked_as_json_or_srt_is_converted_from_verbose_json(account):
    audio = b"\x01" * 32_000  # 2 s for the mock
    file = ("speech.ogg", audio, "audio/ogg")

    as_json = account.client.audio.transcriptions.create(model="whisper-test", file=file)
    as_srt = account.client.audio.transcriptions.create(
        model="whisper-test", file=file, response_format="srt"
    )

    assert as_json.text == "Mock transcript of 32000 bytes."
    assert as_srt == "1\n00:00:00,000 --> 00:00:02,000\nMock transcript of 32000 bytes.\n\n"
    logs = wait_for_logs(account, 2)
    assert [log.cost_micros for log in logs] == [200, 200]
    books_balance(account, 400)


# --- moderations ------------------------------------------------------------------------------


def test_moderations_flag_each_input_and_cost_one_request(account):
    result = account.client.moderations.create(
        model="mod-test", input=["I will kill the process", "a sunny day"]
    )

    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence is True
    assert result.results[1].categories.violence is False
    (log,) = wait_for_logs(account, 1)
    assert (log.call_type, log.cost_micros) == ("moderations", MODERATION_PRICE)
    assert log.request_params["input_count"] == 2
    books_balance(account, MODERATION_PRICE)


def test_moderations_of_a_token_priced_model_cost_their_input_tokens(account):
    account.client.moderations.create(model="mod-tok", input="hello world")

    (log,) = wait_for_logs(account, 1)
    # "hello world" is 2 tokens at $1 per 1M: 2 micro-USD.
    assert (log.prompt_tokens, log.cost_micros) == (2, 2)
    books_balance(account, 2)


# --- refusals ---------------------------------------------------------------------------------


def test_a_wallet_without_enough_credit_is_refused_with_the_amount_needed(
    make_account, media_models, mock
):
    media_channel(mock)
    account = make_account("0.1", channel=False)

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        account.client.images.generate(model="img-test", prompt="x", n=3, size="1792x1024")

    assert excinfo.value.code == "insufficient_quota"
    assert "$0.24" in excinfo.value.message
    assert excinfo.value.message.endswith("Top up your balance.")  # no max_tokens to lower
    (log,) = wait_for_logs(account, 1)
    assert (log.status_code, log.cost_micros) == (403, 0)
    assert account.balance() == 100_000 == wallet_ledger_sum_micros(wallet=account.wallet)
    assert mock.stats["requests"] == 0


def test_a_model_outside_the_keys_allowlist_is_refused(make_account, media_models, mock):
    media_channel(mock)
    account = make_account("10", channel=False, allowed_models=["tts-test"])

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        account.client.images.generate(model="img-test", prompt="x")

    assert excinfo.value.code == "model_not_allowed"


def test_a_model_of_another_kind_is_a_bad_request_and_an_unknown_one_is_not_found(account):
    with pytest.raises(openai.BadRequestError) as excinfo:
        account.client.images.generate(model="tts-test", prompt="x")
    assert (excinfo.value.code, excinfo.value.body["param"]) == ("model_not_supported", "model")
    with pytest.raises(openai.BadRequestError) as excinfo:
        account.client.audio.transcriptions.create(
            model="tts-test", file=("a.wav", make_wav(100), "audio/wav")
        )
    assert excinfo.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError):
        account.client.moderations.create(model="whisper-test", input="x")
    with pytest.raises(openai.NotFoundError) as excinfo:
        account.client.images.generate(model="no-such-model", prompt="x")
    assert excinfo.value.code == "model_not_found"
    assert account.logs().count() == 0
    books_balance(account, 0)


def test_an_upload_over_the_limit_is_refused_413(account, relay, mock):
    too_big = b"\x00" * (2 * 1024 * 1024 + 1)

    response = raw_post(
        relay, account.key, "/v1/audio/transcriptions",
        files={"file": ("a.mp3", too_big, "audio/mpeg")}, data={"model": "whisper-test"},
    )  # fmt: skip

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert mock.stats["requests"] == 0


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", b"--x\r\n", "no boundary"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; "
         b'name="model"\r\n\r\nwhisper-test', "not terminated"),
        ("application/json", b'{"model": "whisper-test"}', "multipart/form-data"),
    ],
)  # fmt: skip
def test_a_malformed_multipart_body_is_a_bad_request(account, relay, content_type, body, message):
    response = httpx.post(
        f"{relay.url}/v1/audio/transcriptions", content=body, timeout=30,
        headers={"authorization": f"Bearer {account.key}", "content-type": content_type},
    )  # fmt: skip

    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert account.logs().count() == 0


def test_a_transcription_without_a_file_names_the_missing_param(account, relay):
    response = raw_post(
        relay, account.key, "/v1/audio/transcriptions", files={"model": (None, "whisper-test")}
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    assert response.json()["error"]["code"] == "missing_required_parameter"


def test_a_key_over_its_rpm_gets_429(make_account, media_models, mock):
    media_channel(mock)
    account = make_account("10", channel=False, rpm=1)

    account.client.moderations.create(model="mod-test", input="hello")
    with pytest.raises(openai.RateLimitError):
        account.client.moderations.create(model="mod-test", input="hello")

    wait_for_logs(account, 1)
    books_balance(account, MODERATION_PRICE)


def test_media_on_an_anthropic_channel_is_not_supported(make_account, media_models):
    channel_create(
        name="claude", type="anthropic", base_url="http://127.0.0.1:9", model_ids=["img-test"]
    )
    account = make_account("10", channel=False)

    with pytest.raises(openai.BadRequestError) as excinfo:
        account.client.images.generate(model="img-test", prompt="x")

    assert "not supported by this model's provider" in excinfo.value.message


# --- upstream faults --------------------------------------------------------------------------


def test_a_failing_channel_fails_over_and_the_call_is_charged_once(
    make_account, media_models, mock
):
    media_channel(mock, "broken", model_mapping={"img-test": "mock-fault-500"}, priority=10)
    media_channel(mock, "working")
    account = make_account("10", channel=False)

    result = account.client.images.generate(model="img-test", prompt="x", n=2)

    assert len(result.data) == 2
    (log,) = wait_for_logs(account, 1)
    assert (log.attempts, log.channel_name, log.cost_micros) == (2, "working", 80_000)
    books_balance(account, 80_000)


def test_an_upstream_that_keeps_failing_is_a_502_and_costs_nothing(
    make_account, media_models, mock
):
    media_channel(mock, model_mapping={"whisper-test": "mock-fault-500"})
    account = make_account("10", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        account.client.audio.transcriptions.create(
            model="whisper-test", file=("a.wav", make_wav(1000), "audio/wav")
        )

    assert excinfo.value.status_code == 502
    (log,) = wait_for_logs(account, 1)
    assert (log.status_code, log.cost_micros) == (502, 0)
    books_balance(account, 0)


def test_a_malformed_upstream_answer_is_a_502_and_costs_nothing(make_account, media_models, mock):
    media_channel(mock, model_mapping={"mod-test": "mock-fault-malformed"})
    account = make_account("10", channel=False)

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as excinfo:
        account.client.moderations.create(model="mod-test", input="hello")

    assert excinfo.value.status_code == 502
    assert time.monotonic() - started < 10
    (log,) = wait_for_logs(account, 1)
    assert (log.error_code, log.cost_micros) == ("invalid_upstream_response", 0)
    books_balance(account, 0)


def test_a_credit_limited_key_is_settled_before_each_answer_ends(make_account, media_models, mock):
    media_channel(mock)
    account = make_account("10", channel=False, credit_limit_micros=1_000_000)

    account.client.images.generate(model="img-test", prompt="x")
    assert account.logs().count() == 1  # no waiting: settled before the response ended
    with account.client.audio.speech.with_streaming_response.create(
        model="tts-test", voice="alloy", input="Hello world", response_format="wav"
    ) as response:
        response.read()
    assert account.logs().count() == 2
    srt = account.client.audio.transcriptions.create(
        model="whisper-test", file=("a.ogg", b"\x01" * 32_000, "audio/ogg"), response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\n")
    assert account.logs().count() == 3

    account.token.refresh_from_db()
    assert account.token.credit_used_micros == IMAGE_PRICE + 165 + 200
    books_balance(account, IMAGE_PRICE + 165 + 200)
