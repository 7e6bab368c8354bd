"""What every filtered list of the console and /api/ reads the same way: the user's time zone,
and a from/to bound given as a date or a date-time in that zone."""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenbyte.errors import ApplicationError


def user_zone(user) -> ZoneInfo:
    """The user's time zone (UTC when the stored name is unknown)."""
    try:
        return ZoneInfo(user.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def filter_error(param: str, message: str) -> ApplicationError:
    return ApplicationError(message, code="invalid_filter", extra={"param": param})


def filter_time(*, param: str, value: str, zone: ZoneInfo, end: bool) -> datetime:
    """ISO 8601 date or date-time; without an offset it is a time in the user's zone. A bare
    date means the start of that day for `from` and the end of it (next midnight) for `to`."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            parsed = datetime.combine(day + timedelta(days=1 if end else 0), time.min)
        else:
            parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise filter_error(
            param, f"'{value}' is not a date or time (use 2026-12-01 or 2026-12-01T14:30)."
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed
