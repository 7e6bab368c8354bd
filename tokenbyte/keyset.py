"""Keyset paging, newest first, for lists that grow without end (logs, ledger, tasks).

Rows are ordered by (a timestamp DESC, id DESC); the page after a row is the rows strictly older
than it. With an index ending in those two columns, a page at any depth costs what the first one
does (OFFSET would read and throw away every row before it), and rows added meanwhile never
shift a page or repeat a row. A cursor is opaque to clients: url-safe base64 of the row's
timestamp and id.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from tokenbyte.errors import ApplicationError

INVALID_CURSOR = "This page link is not valid; start again from the newest rows."


def cursor_encode(*, when: datetime, pk: int) -> str:
    """The cursor of the rows after the row at (`when`, `pk`)."""
    raw = json.dumps([when.isoformat(), pk], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[datetime, int]:
    """(timestamp, id) of a cursor. Anything else, forged or truncated, is an ApplicationError
    on `cursor` (a 400), never a value that reaches the database."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, pk = json.loads(raw)
        when = datetime.fromisoformat(stamp)
        # An id outside a bigint would be a database error, not a 400.
        if when.tzinfo is None or type(pk) is not int or not 0 <= pk < 2**63:
            raise ValueError(cursor)
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        # json.JSONDecodeError is a ValueError; a wrong shape fails the unpacking.
        raise ApplicationError(
            INVALID_CURSOR, code="invalid_cursor", extra={"param": "cursor"}
        ) from None
    return when, pk


def rows_after(
    queryset: QuerySet, *, when: datetime, pk: int, field: str = "created_at"
) -> QuerySet:
    """The rows strictly after (older than) (`when`, `pk`) in (field DESC, id DESC) order.

    `field <= when` is implied by the OR; it is written out so PostgreSQL walks the index as a
    range from `when` down instead of filtering the index from its top.
    """
    return queryset.filter(**{f"{field}__lte": when}).filter(
        Q(**{f"{field}__lt": when}) | Q(pk__lt=pk)
    )


@dataclass(frozen=True)
class KeysetPage:
    rows: list
    # The cursor of the page after this one; None on the last page.
    next_cursor: str | None


def keyset_page(queryset: QuerySet, *, cursor: str, size: int) -> KeysetPage:
    """`size` rows of a (created_at DESC, id DESC) queryset after the cursor, in one query (one
    row more than the page tells whether another follows)."""
    if cursor:
        when, pk = cursor_decode(cursor)
        queryset = rows_after(queryset, when=when, pk=pk)
    rows = list(queryset[: size + 1])
    if len(rows) <= size:
        return KeysetPage(rows=rows, next_cursor=None)
    rows = rows[:size]
    return KeysetPage(
        rows=rows, next_cursor=cursor_encode(when=rows[-1].created_at, pk=rows[-1].pk)
    )
