"""Money helpers. All amounts are integer micro-USD (1 USD = 1_000_000); never floats."""

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per 1M tokens


class MoneyError(ValueError):
    pass


def usd_to_micros(amount: str | Decimal | int) -> int:
    """Parse a USD amount ("2.50") into micro-USD. Over 6 decimals is an error, not a rounding."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation as exc:
        raise MoneyError(f"not a USD amount: {amount!r}") from exc
    if not value.is_finite():
        raise MoneyError(f"not a USD amount: {amount!r}")
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise MoneyError(f"USD amounts have at most 6 decimals: {amount!r}")
    return int(micros)


def micros_to_usd(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.000001"))


def format_usd(micros: int) -> str:
    """Display form: "$1.234500" trimmed to at least two decimals ("$1.2345", "$10.00")."""
    text = f"{micros_to_usd(abs(micros)):f}".rstrip("0")
    whole, _, frac = text.partition(".")
    frac = frac.ljust(2, "0")
    sign = "-" if micros < 0 else ""
    return f"{sign}${whole}.{frac}"


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division, the one rounding rule for costs."""
    return -(-numerator // denominator)


def token_cost_micros(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    input_price_micros_per_mtok: int,
    output_price_micros_per_mtok: int,
    cached_input_price_micros_per_mtok: int,
    cache_write_tokens: int = 0,
    cache_write_price_micros_per_mtok: int = 0,
) -> int:
    """Cost = ceil(sum(tokens × price per 1M) / 1M). Cached tokens (read from the provider's
    prompt cache) and cache-write tokens (written to it) are both part of prompt_tokens."""
    cached = min(cached_tokens, prompt_tokens)
    written = min(cache_write_tokens, prompt_tokens - cached)
    total = (
        (prompt_tokens - cached - written) * input_price_micros_per_mtok
        + cached * cached_input_price_micros_per_mtok
        + written * cache_write_price_micros_per_mtok
        + completion_tokens * output_price_micros_per_mtok
    )
    return ceil_div(total, TOKENS_PER_PRICE_UNIT)
