"""Prices of media calls: per image by variant, per 1M characters, per second of audio, per
request or per input token; the worst case held, the hold planner's unit-price path, and the
catalog's per-variant prices."""

import io
import wave
from dataclasses import MISSING, fields, replace
from types import SimpleNamespace

import pytest

from billing.holds import HoldRefused, HoldRequest, hold_micros_for_units, hold_plan
from catalog.models import Model
from catalog.services import catalog_import
from relay import media, metering
from relay.http import RelayError
from relay.multipart import Upload
from relay.routing import ModelInfo
from tokenbyte.errors import ApplicationError


def model_info(price_unit: str, unit_price: int = 0, **kwargs) -> ModelInfo:
    # Prices and sizes 0 unless given (whatever fields the catalog snapshot grows).
    zero = {f.name: 0 for f in fields(ModelInfo) if f.default is MISSING}
    strings = {"model_id": "m", "display_name": "m", "provider": "openai", "call_type": "image"}
    return ModelInfo(
        **{**zero, **strings, "capabilities": frozenset(), "price_unit": price_unit,
           "unit_price": unit_price, **kwargs}
    )  # fmt: skip


def wav(milliseconds: int, rate: int = 16_000, channels: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00" * (rate * milliseconds // 1000) * 2 * channels)
    return out.getvalue()


IMAGE = model_info(
    "image", 40_000, unit_price_variants={"1024x1024": 40_000, "1024x1024/hd": 80_000}
)


@pytest.mark.parametrize(
    ("size", "quality", "price"),
    [
        ("1024x1024", "hd", 80_000),
        ("1024x1024", "standard", 40_000),  # no such variant: the size's price
        ("1024x1024", None, 40_000),
        ("512x512", "hd", 40_000),  # no such size: the unit price
        (None, "hd", 40_000),
    ],
)
def test_an_image_costs_its_variant_price_else_its_sizes_else_the_unit_price(size, quality, price):
    assert metering.image_price(IMAGE, size, quality) == price


def test_units_are_priced_by_the_models_price_unit_rounded_up():
    speech = model_info("mchar", 15_000_000)
    seconds = model_info("second", 100)
    per_request = model_info("request", 1_000)
    tokens = model_info("mtok", input_price=150_000)

    assert metering.media_cost_micros(IMAGE, metering.MediaUnits(images=3, image_price=80_000)) == (
        240_000
    )
    assert metering.media_cost_micros(speech, metering.MediaUnits(characters=11)) == 165
    assert metering.media_cost_micros(speech, metering.MediaUnits(characters=1)) == 15
    assert metering.media_cost_micros(seconds, metering.MediaUnits(milliseconds=2_501)) == 251
    assert metering.media_cost_micros(per_request, metering.MediaUnits()) == 1_000
    # 7 tokens at $0.15 per 1M: 1.05 micro-USD, rounded up.
    assert metering.media_cost_micros(tokens, metering.MediaUnits(tokens=7)) == 2


def test_hold_micros_for_units_rounds_up():
    assert hold_micros_for_units(100, 3) == 300
    assert hold_micros_for_units(100, 2_501, 1_000) == 251
    assert hold_micros_for_units(15_000_000, 1, 1_000_000) == 15
    assert hold_micros_for_units(0, 10) == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (wav(2_500), 2_500),
        (wav(1_000, rate=8_000, channels=1), 1_000),
        (wav(333, rate=44_100, channels=1), 333),
        (wav(1_000)[:-32_000], 500),  # truncated: what is there
        (b"ID3\x03\x00" + b"\x00" * 100, None),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x10\x00\x00\x00" + b"\x00" * 16, None),  # no fmt chunk
    ],
)
def test_the_duration_of_a_wav_is_read_from_its_header(data, expected):
    assert media.wav_duration_ms(data) == expected


def upload(data: bytes, name: str = "a.wav") -> Upload:
    return Upload("file", name, "audio/wav", data)


def test_the_hold_of_a_transcription_is_the_wav_duration_or_the_size_at_8_kbit_s():
    seconds = model_info("second", 100, call_type="audio")
    of_wav = media.media_request(media.AUDIO_TRANSCRIPTIONS, {}, [upload(wav(2_500))])
    of_mp3 = media.media_request(media.AUDIO_TRANSCRIPTIONS, {}, [upload(b"\xff" * 40_001)])

    assert media.quote(of_wav, seconds) == media.Quote(metering.MediaUnits(milliseconds=2_500), 250)
    assert media.quote(of_mp3, seconds) == media.Quote(
        metering.MediaUnits(milliseconds=41_000), 4_100
    )


def test_the_hold_of_images_is_n_times_the_variant_price():
    request = media.from_json(
        media.IMAGES_GENERATIONS, {"prompt": "x", "n": 3, "size": "1024x1024", "quality": "hd"}
    )

    assert media.quote(request, IMAGE).cost_micros == 240_000


@pytest.mark.parametrize(
    ("kind", "body", "files", "param"),
    [
        (media.IMAGES_GENERATIONS, {}, [], "prompt"),
        (media.IMAGES_GENERATIONS, {"prompt": "x", "n": 11}, [], "n"),
        (media.IMAGES_GENERATIONS, {"prompt": "x", "n": 0}, [], "n"),
        (media.IMAGES_GENERATIONS, {"prompt": "x", "n": True}, [], "n"),
        (
            media.IMAGES_GENERATIONS,
            {"prompt": "x", "response_format": "png"},
            [],
            "response_format",
        ),
        (media.IMAGES_EDITS, {"prompt": "x"}, [], "image"),
        (media.AUDIO_SPEECH, {"input": "hi"}, [], "voice"),
        (media.AUDIO_SPEECH, {"input": "a" * 4097, "voice": "alloy"}, [], "input"),
        (media.AUDIO_SPEECH, {"input": "hi", "voice": "alloy", "speed": 5}, [], "speed"),
        (media.AUDIO_SPEECH, {"input": 3, "voice": "alloy"}, [], "input"),
        (media.AUDIO_TRANSCRIPTIONS, {}, [], "file"),
        (media.AUDIO_TRANSCRIPTIONS, {}, [upload(b"")], "file"),
        (media.AUDIO_TRANSCRIPTIONS, {"response_format": "xml"}, [upload(b"x")], "response_format"),
        (media.AUDIO_TRANSCRIPTIONS, {"temperature": 2.0}, [upload(b"x")], "temperature"),
        (media.AUDIO_TRANSCRIPTIONS, {"stream": True}, [upload(b"x")], "stream"),
        (media.MODERATIONS, {"input": []}, [], "input"),
        (media.MODERATIONS, {"input": 3}, [], "input"),
        (media.MODERATIONS, {"input": ["ok", 3]}, [], "input[1]"),
    ],
)
def test_bad_parameters_are_400_naming_the_param(kind, body, files, param):
    with pytest.raises(RelayError) as excinfo:
        media.media_request(kind, body, files)

    assert (excinfo.value.status, excinfo.value.param) == (400, param)


def test_a_moderation_model_needs_the_capability_and_an_image_model_the_image_call_type():
    moderation = model_info("request", capabilities=frozenset({"moderation"}), call_type="chat")

    media.check_model(media.MODERATIONS, moderation)
    media.check_model(media.IMAGES_GENERATIONS, IMAGE)
    for kind, model in [
        (media.MODERATIONS, IMAGE),
        (media.AUDIO_SPEECH, IMAGE),
        (media.AUDIO_SPEECH, model_info("second", call_type="audio")),
        (media.AUDIO_TRANSCRIPTIONS, model_info("mchar", call_type="audio")),
    ]:
        with pytest.raises(RelayError) as excinfo:
            media.check_model(kind, model)
        assert excinfo.value.code == "model_not_supported"


def test_srt_and_vtt_are_rendered_from_verbose_json_segments():
    data = {
        "text": "one two",
        "segments": [
            {"start": 0, "end": 1.5, "text": " one"},
            {"start": 1.5, "end": 3661.25, "text": " two"},
        ],
    }

    assert media._render_transcript(data, "srt", 0) == (
        "1\n00:00:00,000 --> 00:00:01,500\none\n\n2\n00:00:01,500 --> 01:01:01,250\ntwo\n\n"
    )
    assert media._render_transcript(data, "vtt", 0) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\none\n\n00:00:01.500 --> 01:01:01.250\ntwo\n\n"
    )
    assert media._render_transcript(data, "text", 0) == "one two\n"


# --- the hold planner's unit-price path --------------------------------------------------------


def hold_key(**kwargs):
    fields = {
        "key_id": 1, "wallet_id": 1, "group_id": None, "group_name": "",
        "max_cost_per_request_micros": None, "quota_tokens": None, "group_quota_tokens": None,
        "credit_limited": False, "quota_limited": False, "group_credit_limited": False,
        "group_quota_limited": False, "membership_id": None, "allowance_micros": None,
    }  # fmt: skip
    return SimpleNamespace(**{**fields, **kwargs})


MEDIA_HOLD = HoldRequest(
    request_id="r", key=hold_key(), prices=IMAGE, model_id="m", call_type="images.generations",
    prompt_tokens=0, max_tokens=0, n=1, default_max_tokens=0, has_output=False,
    fixed_micros=240_000,
)  # fmt: skip


def test_a_unit_priced_hold_reserves_its_fixed_amount_and_no_tokens():
    plan = hold_plan(MEDIA_HOLD, None)

    assert (plan.amount_micros, plan.tokens) == (240_000, 0)


def test_a_unit_priced_hold_over_the_per_request_cap_or_the_wallet_is_refused():
    capped = replace(MEDIA_HOLD, key=hold_key(max_cost_per_request_micros=100_000))
    with pytest.raises(HoldRefused, match=r"up to \$0.24"):
        hold_plan(capped, None)
    with pytest.raises(HoldRefused, match=r"needs up to \$0.24"):
        hold_plan(
            MEDIA_HOLD, SimpleNamespace(money=lambda key: (100_000, "x"), tokens_of=lambda r: None)
        )
    with pytest.raises(HoldRefused, match=r"needs up to \$0.24 and there is no wallet"):
        hold_plan(replace(MEDIA_HOLD, key=hold_key(wallet_id=None)), None)


# --- the catalog ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_catalog_imports_per_variant_unit_prices_in_usd():
    catalog_import(
        data={
            "models": [
                {
                    "id": "dall-e-3", "provider": "openai", "call_type": "image",
                    "price_unit": "image", "unit_price": "0.04",
                    "unit_price_variants": {"1024x1792": "0.08", "1024x1024/hd": "0.08"},
                }
            ]
        }
    )  # fmt: skip

    model = Model.objects.get(model_id="dall-e-3")
    assert model.unit_price_micros == 40_000
    assert model.unit_price_variants == {"1024x1792": 80_000, "1024x1024/hd": 80_000}


@pytest.mark.django_db
@pytest.mark.parametrize("variants", [["0.08"], {"1024x1024": "0.0000001"}, {"": "1"}])
def test_the_catalog_refuses_bad_variant_prices(variants):
    entry = {"id": "x", "provider": "openai", "unit_price_variants": variants}

    with pytest.raises(ApplicationError, match="unit_price_variants"):
        catalog_import(data={"models": [entry]})
    assert not Model.objects.filter(model_id="x").exists()
