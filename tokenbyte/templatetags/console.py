"""Filters every console page formats money, times and counts with."""

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import template

from tokenbyte.money import format_usd

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """micro-USD as "$1.2345" (at least two, at most six decimals); None as an en dash."""
    if micros is None or micros == "":
        return "–"
    return format_usd(int(micros))


def _zone(zone_or_user) -> ZoneInfo:
    # A user (its time_zone) or a zone name; unknown names are UTC, as in user_zone.
    name = getattr(zone_or_user, "time_zone", zone_or_user) or "UTC"
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@register.filter
def when(value: datetime | None, zone_or_user=None) -> str:
    """An aware datetime in the user's zone (or a zone name): "2026-12-02 14:05:09"."""
    if value is None:
        return "–"
    return value.astimezone(_zone(zone_or_user)).strftime("%Y-%m-%d %H:%M:%S")


@register.filter
def day(value: datetime | None, zone_or_user=None) -> str:
    """The date of an aware datetime in the user's zone: "2026-12-02"."""
    if value is None:
        return "–"
    return value.astimezone(_zone(zone_or_user)).strftime("%Y-%m-%d")


@register.filter
def num(value: int | None) -> str:
    """A count with thousands separators; None as "unlimited"."""
    if value is None:
        return "unlimited"
    return f"{int(value):,}"


@register.filter
def ms(value: int | None) -> str:
    """Milliseconds as "1,234 ms"; None as an en dash."""
    if value is None:
        return "–"
    return f"{int(value):,} ms"


@register.filter
def columns(spec: str) -> list[dict]:
    """Table headers from "Time,Cost:num,…": a ":num" column is right-aligned."""
    result = []
    for part in spec.split(","):
        label, _, kind = part.strip().partition(":")
        result.append({"label": label, "num": kind == "num"})
    return result
