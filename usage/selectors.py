import csv
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet, Sum, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import TruncDay, TruncMonth, TruncWeek
from django.utils import timezone

from accounts.models import ApiToken, TokenGroup, User
from accounts.scope import Perm, Scope
from billing.models import Alert
from billing.selectors import Allowance, allowance_for_scope, wallet_balance_micros_for_scope
from catalog.selectors import models_callable
from tokenbyte.errors import ApplicationError
from tokenbyte.filters import filter_error, filter_time, user_zone
from tokenbyte.keyset import KeysetPage, keyset_page, rows_after
from tokenbyte.money import MICROS_PER_USD
from usage.models import RequestLog, UsageRollup


def month_start_for_user(*, user: User, now: datetime | None = None) -> datetime:
    """Midnight of the first day of the user's current month, in the user's zone."""
    local = (now or timezone.now()).astimezone(user_zone(user))
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def request_logs_in_scope(*, scope: Scope) -> QuerySet[RequestLog]:
    """The scope's request logs, newest first: the user's own without an organization
    (personal: the log_user_created index, organization_id IS NULL a filter), or an
    organization's (every member's for owners and admins, the user's own for a member).

    Key and group names are read from the copies on the log row, so no join is needed.
    """
    return RequestLog.objects.filter(scope.rows()).order_by("-created_at", "-id")


def request_logs_with_member(logs: QuerySet[RequestLog]) -> QuerySet[RequestLog]:
    """The logs with `member_email`, the email of the member who made each call (one join on
    the user's primary key: use it on a page or a chunk, after the filters)."""
    return logs.annotate(member_email=F("user__email"))


def shows_member(scope: Scope) -> bool:
    """Whether the scope's lists name the member of each call: an organization's, seen by an
    owner or an admin (everything else is the user's own)."""
    return not scope.personal and scope.sees_all


# --- rollups ---
# Stats are read from UsageRollup (the user's calls summed per UTC hour × key × group × model ×
# call type), never by scanning the logs: a range of 90 days is at most 2,160 hours per key and
# model, whatever the number of calls. Days, weeks and months are the user's own: hours are
# bucketed with Trunc(…, tzinfo=zone). Rows are whole UTC hours, so in a zone with a :30 or :45
# offset (India, Nepal, central Australia) an hour's calls count in the local day, week or month
# where that hour starts.

GRANULARITIES = ("day", "week", "month")
SPLITS = ("model", "key", "group")
# The Usage page's tables: the splits, and per member in an organization (owners and admins).
BREAKDOWNS = (*SPLITS, "member")
RANGE_PRESETS = {
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "this_month": "This month",
    "last_month": "Last month",
    "custom": "Custom",
}
# A custom range may span two years of days (731 buckets at most).
MAX_RANGE_DAYS = 731
OTHER = "other"

_ROLLUP_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_micros",
    "duration_ms",
)
_TRUNCS = {"day": TruncDay, "week": TruncWeek, "month": TruncMonth}
_SPLIT_FIELDS = {"model": "model_id", "key": "key_id", "group": "group_id", "member": "user_id"}


@dataclass(frozen=True)
class RollupTotals:
    """Sums of rollup rows: calls, failed calls, tokens, spend and time."""

    requests: int = 0
    # Calls answered with a status of 400 or more.
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # micro-USD
    cost_micros: int = 0
    # Sum of the calls' durations, ms.
    duration_ms: int = 0

    @classmethod
    def _from_row(cls, row: dict, **extra) -> "RollupTotals":
        return cls(**{name: row.get(name) or 0 for name in _ROLLUP_SUMS}, **extra)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def error_rate_percent(self) -> float | None:
        """Failed calls in percent, one decimal; None without calls."""
        if not self.requests:
            return None
        return round(self.errors * 100 / self.requests, 1)

    @property
    def avg_duration_ms(self) -> int | None:
        """Mean duration of a call, whole ms rounded half up; None without calls."""
        if not self.requests:
            return None
        return (2 * self.duration_ms + self.requests) // (2 * self.requests)


@dataclass(frozen=True)
class UsageBreakdownRow(RollupTotals):
    """One key, model or group of a breakdown: its id (as text) and its name beside the sums."""

    key: str = ""
    label: str = ""
    # By member: the member's email (the label is their name, or the email without one).
    member_email: str = ""


@dataclass(frozen=True)
class UsageRange:
    """Whole days of the user, first_day to last_day inclusive: [start, end) as aware datetimes."""

    preset: str
    first_day: date
    last_day: date
    start: datetime
    end: datetime

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1


@dataclass(frozen=True)
class UsageSeriesLine:
    """One line (or stack) of a series: a value per bucket."""

    key: str
    label: str
    # micro-USD per bucket
    cost_micros: list[int]
    tokens: list[int]
    requests: list[int]


@dataclass(frozen=True)
class UsageSeries:
    granularity: str
    split: str | None
    # The first local day of each bucket, every bucket of the range (empty ones too).
    buckets: list[date]
    total: UsageSeriesLine
    # The top keys, models or groups by spend and "other"; empty when the series is not split.
    lines: list[UsageSeriesLine]

    @property
    def bucket_labels(self) -> list[str]:
        if self.granularity == "month":
            return [bucket.strftime("%Y-%m") for bucket in self.buckets]
        return [bucket.isoformat() for bucket in self.buckets]


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def usage_range_for_user(
    *,
    user: User,
    preset: str = "30d",
    first_day: date | None = None,
    last_day: date | None = None,
    now: datetime | None = None,
) -> UsageRange:
    """The user's days of a range preset ("7d", "30d", "90d" end today; "this_month",
    "last_month"; "custom" from first_day to last_day inclusive)."""
    zone = user_zone(user)
    today = (now or timezone.now()).astimezone(zone).date()
    if preset in ("7d", "30d", "90d"):
        first_day, last_day = today - timedelta(days=int(preset[:-1]) - 1), today
    elif preset == "this_month":
        first_day, last_day = today.replace(day=1), today
    elif preset == "last_month":
        last_day = today.replace(day=1) - timedelta(days=1)
        first_day = last_day.replace(day=1)
    elif preset == "custom":
        if first_day is None or last_day is None:
            param = "from" if first_day is None else "to"
            raise ApplicationError(
                "A custom range needs a first and a last day.",
                code="invalid_range",
                extra={"param": param},
            )
        if first_day > last_day:
            raise ApplicationError(
                "The range's first day is after its last day.",
                code="invalid_range",
                extra={"param": "from"},
            )
        if (last_day - first_day).days + 1 > MAX_RANGE_DAYS:
            raise ApplicationError(
                f"A range spans at most {MAX_RANGE_DAYS} days.",
                code="invalid_range",
                extra={"param": "from"},
            )
    else:
        raise ApplicationError(
            f"Unknown range {preset!r}; one of {', '.join(RANGE_PRESETS)}.",
            code="invalid_range",
            extra={"param": "range"},
        )
    return UsageRange(
        preset=preset,
        first_day=first_day,
        last_day=last_day,
        start=_local_midnight(first_day, zone),
        end=_local_midnight(last_day + timedelta(days=1), zone),
    )


def _rollups(*, scope: Scope, start: datetime, end: datetime) -> QuerySet[UsageRollup]:
    """The scope's rollup rows of the hours in [start, end). Personal: the user's without an
    organization (organization_id 0); an organization's: all its members' (owners, admins) or
    the user's own there. The unique constraint's index (user, hour, organization_id, …) serves
    the user's; usage_rollup_org_hour an organization's."""
    rows = UsageRollup.objects.filter(hour__gte=start, hour__lt=end)
    if scope.personal:
        rows = rows.filter(user=scope.user, organization_id=0)
    else:
        rows = rows.filter(organization_id=scope.organization_id)
        if not scope.sees_all:
            rows = rows.filter(user=scope.user)
    return rows.order_by()


def usage_rollup_totals_in_scope(*, scope: Scope, start: datetime, end: datetime) -> RollupTotals:
    """The scope's calls, tokens, spend and time of the hours in [start, end) (one query)."""
    row = _rollups(scope=scope, start=start, end=end).aggregate(
        **{name: Sum(name) for name in _ROLLUP_SUMS}
    )
    return RollupTotals._from_row(row)


def _split_labels(*, scope: Scope, split: str, keys: list) -> dict:
    """Names of the split's values: models by id; keys and groups from the scope's rows
    (0 = none; a row that is gone is named by its id)."""
    if split == "model":
        return {key: key for key in keys}
    ids = [key for key in keys if key]
    rows = ApiToken.objects if split == "key" else TokenGroup.objects
    in_scope = rows.filter(scope.rows(user_field="owner"), pk__in=ids)
    names = dict(in_scope.values_list("pk", "name")) if ids else {}
    return {
        key: names.get(key, f"deleted {split} #{key}") if key else f"no {split}" for key in keys
    }


def _buckets(*, granularity: str, first_day: date, last_day: date) -> list[date]:
    if granularity == "day":
        return [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    if granularity == "week":
        # ISO weeks, as TruncWeek: they start on Monday.
        monday = first_day - timedelta(days=first_day.weekday())
        return [monday + timedelta(weeks=n) for n in range((last_day - monday).days // 7 + 1)]
    buckets = []
    month = first_day.replace(day=1)
    while month <= last_day:
        buckets.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return buckets


def _bucket_day(value: datetime | date, zone: ZoneInfo) -> date:
    if isinstance(value, datetime):
        return value.astimezone(zone).date() if value.tzinfo else value.date()
    return value


def usage_series_in_scope(
    *,
    scope: Scope,
    start: datetime,
    end: datetime,
    granularity: str = "day",
    split: str | None = None,
    top: int = 5,
) -> UsageSeries:
    """The scope's spend, tokens and calls of the hours in [start, end) per day, week or month
    of the user, optionally split by model, key or group: the `top` values by spend, the rest as
    "other".

    One query (and one for the names of keys or groups)."""
    if granularity not in GRANULARITIES:
        raise ApplicationError(
            f"Unknown granularity {granularity!r}; one of {', '.join(GRANULARITIES)}.",
            code="invalid_granularity",
            extra={"param": "granularity"},
        )
    if split is not None and split not in SPLITS:
        raise ApplicationError(
            f"Unknown split {split!r}; one of {', '.join(SPLITS)}.",
            code="invalid_split",
            extra={"param": "split"},
        )
    zone = user_zone(scope.user)
    buckets = _buckets(
        granularity=granularity,
        first_day=start.astimezone(zone).date(),
        last_day=(end - timedelta(microseconds=1)).astimezone(zone).date(),
    )
    index = {bucket: n for n, bucket in enumerate(buckets)}
    field = _SPLIT_FIELDS[split] if split else None
    rows = (
        _rollups(scope=scope, start=start, end=end)
        .annotate(bucket=_TRUNCS[granularity]("hour", tzinfo=zone))
        .values("bucket", *([field] if field else []))
        .annotate(
            cost=Sum("cost_micros"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            calls=Sum("requests"),
        )
    )

    def empty() -> dict[str, list[int]]:
        return {name: [0] * len(buckets) for name in ("cost_micros", "tokens", "requests")}

    total = empty()
    per_key: dict = {}
    for row in rows:
        n = index[_bucket_day(row["bucket"], zone)]
        targets = [total]
        if field:
            targets.append(per_key.setdefault(row[field], empty()))
        for values in targets:
            values["cost_micros"][n] += row["cost"] or 0
            values["tokens"][n] += row["tokens"] or 0
            values["requests"][n] += row["calls"] or 0

    lines = []
    if field:
        labels = _split_labels(scope=scope, split=split, keys=list(per_key))

        def rank(key) -> tuple:
            values = per_key[key]
            return (-sum(values["cost_micros"]), -sum(values["requests"]), labels[key])

        ranked = sorted(per_key, key=rank)
        for key in ranked[:top]:
            lines.append(UsageSeriesLine(key=str(key), label=labels[key], **per_key[key]))
        if len(ranked) > top:
            other = empty()
            for key in ranked[top:]:
                for name, values in per_key[key].items():
                    other[name] = [a + b for a, b in zip(other[name], values, strict=True)]
            lines.append(UsageSeriesLine(key=OTHER, label="other", **other))
    return UsageSeries(
        granularity=granularity,
        split=split,
        buckets=buckets,
        total=UsageSeriesLine(key="", label="all", **total),
        lines=lines,
    )


def usage_breakdowns_for_scope(scope: Scope) -> tuple[str, ...]:
    """The breakdowns the scope offers: by member only in an organization's, for owners and
    admins (a member sees their own usage only)."""
    return BREAKDOWNS if shows_member(scope) else SPLITS


def usage_breakdown_in_scope(
    *, scope: Scope, start: datetime, end: datetime, by: str
) -> list[UsageBreakdownRow]:
    """The scope's calls of the hours in [start, end) per key, model, group or member, the most
    spent first, with error rate and mean duration (one query, and one for the names)."""
    if by not in BREAKDOWNS:
        offered = usage_breakdowns_for_scope(scope)
        raise ApplicationError(
            f"Unknown breakdown {by!r}; one of {', '.join(offered)}.",
            code="invalid_breakdown",
            extra={"param": "by"},
        )
    if by == "member" and scope.personal:
        raise ApplicationError(
            "Usage by member is an organization's: choose one with the switcher or `organization`.",
            code="invalid_breakdown",
            extra={"param": "by"},
        )
    if by == "member" and not scope.sees_all:
        raise ApplicationError(
            f"Your role ({scope.role}) in {scope.organization} shows your own usage only.",
            code="permission_denied",
            extra={"param": "by", "status": 403},
        )
    field = _SPLIT_FIELDS[by]
    rows = list(
        _rollups(scope=scope, start=start, end=end)
        .values(field)
        .annotate(**{name: Sum(name) for name in _ROLLUP_SUMS})
    )
    keys = [row[field] for row in rows]
    emails: dict[int, str] = {}
    if by == "member":
        # Rollups go with their user (CASCADE): every member row has its user.
        users = list(User.objects.filter(pk__in=keys).values_list("pk", "name", "email"))
        labels = {pk: name or email for pk, name, email in users}
        emails = {pk: email for pk, _, email in users}
    else:
        labels = _split_labels(scope=scope, split=by, keys=keys)
    result = [
        UsageBreakdownRow._from_row(
            row,
            key=str(row[field]),
            label=labels[row[field]],
            member_email=emails.get(row[field], ""),
        )
        for row in rows
    ]
    result.sort(key=lambda row: (-row.cost_micros, -row.requests, row.label))
    return result


# --- logs ---
# The Logs page, /api/logs/ and the CSV export all read through `request_logs_filtered` and page
# with keyset cursors: newest first by (created_at DESC, id DESC), the page after a row being the
# rows strictly older than it. Every filter is an equality on a column that an index puts right
# after user_id, ahead of (created_at DESC, id DESC), so any page at any depth is one index range
# scan (see the README for the indexes and plans).

LOG_PAGE_SIZE = 100
LOG_CSV_CHUNK_ROWS = 20_000

# The call types the relay logs (its endpoint names), as the filter offers them.
LOG_CALL_TYPES = {
    "chat.completions": "Chat",
    "completions": "Completions",
    "embeddings": "Embeddings",
    "images.generations": "Image",
    "audio.speech": "Text to speech",
    "audio.transcriptions": "Transcription",
}
LOG_STATUS_SUCCESS = "success"
LOG_STATUS_ERROR = "error"
# Calls answered with a status from this one on are errors (as in the usage rollups).
LOG_ERROR_STATUS_FROM = 400


@dataclass(frozen=True)
class LogFilters:
    # Both aware; `since` is inclusive, `until` exclusive.
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    key_id: int | None = None
    group_id: int | None = None
    call_type: str = ""
    # "", "success", "error" or one status code ("429").
    status: str = ""

    @property
    def active(self) -> bool:
        return self != LogFilters()


# GET parameter of each filter (the page, the API and the CSV link share them).
LOG_FILTER_PARAMS = ("from", "to", "model", "key", "group", "call_type", "status")


def _parse_log_id(param: str, value: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise filter_error(param, f"'{value}' is not a {param} id.")
    return int(value)


def log_filters_parse(*, user: User, params: Mapping[str, str]) -> LogFilters:
    """The filters of a query string (the names of LOG_FILTER_PARAMS; empty values are unset).

    Raises ApplicationError(code="invalid_filter", param=<name>) for a value that cannot be one.
    """
    values = {name: str(params.get(name) or "").strip() for name in LOG_FILTER_PARAMS}
    for name, value in values.items():
        # PostgreSQL text cannot hold NUL: such a value could never match, and would fail the query.
        if "\x00" in value:
            raise filter_error(name, f"{name} cannot contain a NUL character.")
    zone = user_zone(user)
    since = until = None
    if values["from"]:
        since = filter_time(param="from", value=values["from"], zone=zone, end=False)
    if values["to"]:
        until = filter_time(param="to", value=values["to"], zone=zone, end=True)
    if since and until and since >= until:
        raise filter_error("to", "'to' must be later than 'from'.")
    status = values["status"]
    is_code = status.isdigit() and len(status) == 3 and 100 <= int(status) <= 599
    if status not in ("", LOG_STATUS_SUCCESS, LOG_STATUS_ERROR) and not is_code:
        raise filter_error(
            "status", "status is 'success', 'error' or an HTTP status code such as 429."
        )
    if len(values["model"]) > 100:
        raise filter_error("model", "A model id has at most 100 characters.")
    if len(values["call_type"]) > 24:
        raise filter_error("call_type", "A call type has at most 24 characters.")
    return LogFilters(
        since=since,
        until=until,
        model=values["model"],
        key_id=_parse_log_id("key", values["key"]) if values["key"] else None,
        group_id=_parse_log_id("group", values["group"]) if values["group"] else None,
        call_type=values["call_type"],
        status=status,
    )


def request_logs_filtered(*, scope: Scope, filters: LogFilters) -> QuerySet[RequestLog]:
    """The scope's logs that pass the filters, newest first: (created_at DESC, id DESC).

    Indexes that serve the personal scope (leading columns): (user_id, created_at DESC, id DESC)
    with or without a time range; (user_id, <column>, created_at DESC, id DESC) for model_id,
    api_token_id, group_id, call_type and status_code; errors by a partial index on (user_id,
    created_at DESC, id DESC) WHERE status_code >= 400. Successes (most rows) walk the first
    one; `organization_id IS NULL` is a filter on each. An organization's logs walk
    (organization_id, created_at DESC, id DESC) and filter the rest; a member's own there walk
    the user's indexes and filter the organization.
    """
    logs = RequestLog.objects.filter(scope.rows())
    if filters.since is not None:
        logs = logs.filter(created_at__gte=filters.since)
    if filters.until is not None:
        logs = logs.filter(created_at__lt=filters.until)
    if filters.model:
        logs = logs.filter(model_id=filters.model)
    if filters.key_id is not None:
        logs = logs.filter(api_token_id=filters.key_id)
    if filters.group_id is not None:
        logs = logs.filter(group_id=filters.group_id)
    if filters.call_type:
        logs = logs.filter(call_type=filters.call_type)
    if filters.status == LOG_STATUS_SUCCESS:
        logs = logs.filter(status_code__lt=LOG_ERROR_STATUS_FROM)
    elif filters.status == LOG_STATUS_ERROR:
        logs = logs.filter(status_code__gte=LOG_ERROR_STATUS_FROM)
    elif filters.status:
        logs = logs.filter(status_code=int(filters.status))
    return logs.order_by("-created_at", "-id")


# The columns the Logs table shows (usage/templatetags/log_table.py): a page loads only these,
# not the request parameters and response excerpt of 100 calls.
LOG_LIST_FIELDS = (
    "id", "request_id", "created_at", "cost_micros", "model_id", "duration_ms", "ttft_ms",
    "prompt_tokens", "completion_tokens", "cached_tokens", "status_code", "token_name",
    "group_name",
)  # fmt: skip


# A page of logs: `rows` and the `next_cursor` (None on the last page).
LogPage = KeysetPage


def request_logs_page(
    logs: QuerySet[RequestLog], *, cursor: str = "", size: int = LOG_PAGE_SIZE
) -> LogPage:
    """One page of `request_logs_filtered(...)`: `size` rows after the cursor (one query)."""
    return keyset_page(logs, cursor=cursor, size=size)


def log_filter_options(*, scope: Scope) -> dict[str, list[tuple[int, str]]]:
    """The filter form's choices in one query: the scope's keys and groups (as its logs: the
    user's personal ones; an organization's, every member's for owners and admins), and the
    model ids of the catalog (suggestions: a log may name a model the catalog no longer
    routes)."""
    in_scope = scope.rows(user_field="owner")
    keys = ApiToken.objects.filter(in_scope).values_list(Value("key"), "id", "name")
    groups = TokenGroup.objects.filter(in_scope).values_list(Value("group"), "id", "name")
    models = models_callable().order_by().values_list(Value("model"), Value(0), "model_id")
    options: dict[str, list[tuple[int, str]]] = {"key": [], "group": [], "model": []}
    for kind, pk, name in keys.union(groups, models, all=True):
        options[kind].append((pk, name))
    for choices in options.values():
        choices.sort(key=lambda choice: (choice[1].casefold(), choice[0]))
    return options


# The CSV export's columns, in order (the README documents them).
LOG_CSV_COLUMNS = (
    "time",
    "request_id",
    "model",
    "call_type",
    "stream",
    "key",
    "group",
    "status_code",
    "error_code",
    "duration_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "attempts",
)
# An organization's export adds who made each call, last: the columns above are a contract.
LOG_CSV_MEMBER_COLUMN = "member_email"
_CSV_FIELDS = (
    "created_at",
    "request_id",
    "model_id",
    "call_type",
    "is_stream",
    "token_name",
    "group_name",
    "status_code",
    "error_code",
    "duration_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_micros",
    "attempts",
    "id",
)


def log_time_iso(value: datetime, zone: ZoneInfo) -> str:
    """ISO 8601 in the user's zone with its offset, to the millisecond (CSV and API)."""
    return value.astimezone(zone).isoformat(timespec="milliseconds")


def usd_string(micros: int) -> str:
    """micro-USD as an exact USD decimal string with six places: 1_234 -> "0.001234"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


class _CsvBuffer:
    """csv.writer's file: keeps what it writes until the chunk is taken."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


def _csv_writer(buffer: _CsvBuffer):
    # "\n" like PostgreSQL's COPY, so both paths write the same bytes.
    return csv.writer(buffer, lineterminator="\n")


def log_csv_columns(*, scope: Scope) -> tuple[str, ...]:
    """The export's columns: LOG_CSV_COLUMNS, and the member's email in an organization's."""
    if scope.personal:
        return LOG_CSV_COLUMNS
    return (*LOG_CSV_COLUMNS, LOG_CSV_MEMBER_COLUMN)


def _log_csv_header(columns: tuple[str, ...]) -> str:
    buffer = _CsvBuffer()
    _csv_writer(buffer).writerow(columns)
    return buffer.take()


# A position in (created_at DESC, id DESC) order.
LogPosition = tuple[datetime, int]


def _log_csv_chunk_python(
    logs: QuerySet[RequestLog],
    after: LogPosition | None,
    zone: ZoneInfo,
    member: bool = False,
) -> tuple[str, LogPosition | None]:
    """Any database: the rows through the ORM, formatted here."""
    if after is not None:
        logs = rows_after(logs, when=after[0], pk=after[1])
    # The member's email goes between the columns and the id (which stays last).
    fields = (*_CSV_FIELDS[:-1], "user__email", "id") if member else _CSV_FIELDS
    rows = list(logs.values_list(*fields)[:LOG_CSV_CHUNK_ROWS])
    buffer = _CsvBuffer()
    writer = _csv_writer(buffer)
    for row in rows:
        writer.writerow(
            (
                log_time_iso(row[0], zone),
                *row[1:4],
                "true" if row[4] else "false",
                *row[5:10],
                "" if row[10] is None else row[10],
                *row[11:14],
                usd_string(row[14]),
                *row[15:-1],
            )
        )
    full = len(rows) == LOG_CSV_CHUNK_ROWS
    return buffer.take(), ((rows[-1][0], rows[-1][-1]) if full else None)


# PostgreSQL formats the rows itself (COPY … TO STDOUT, CSV): several times faster than
# building them in Python. The time is the instant in the user's zone with that instant's offset
# (which moves with daylight saving), truncated to the millisecond like datetime.isoformat; the
# zone is looked up once per row in the inner query. Empty strings become NULL because COPY
# writes '' as "" (it keeps NULL apart from ''), where csv.writer writes nothing.
_PG_CSV_SELECT = """
SELECT to_char(r.local_time, 'YYYY-MM-DD"T"HH24:MI:SS.MS')
         || CASE WHEN r.local_time < r.utc_time THEN '' ELSE '+' END
         || to_char(r.local_time - r.utc_time, 'HH24:MI'),
       NULLIF(r.request_id, ''), NULLIF(r.model_id, ''), NULLIF(r.call_type, ''),
       CASE WHEN r.is_stream THEN 'true' ELSE 'false' END,
       NULLIF(r.token_name, ''), NULLIF(r.group_name, ''), r.status_code,
       NULLIF(r.error_code, ''), r.duration_ms, r.ttft_ms, r.prompt_tokens,
       r.completion_tokens, r.cached_tokens,
       (r.cost_micros::numeric / 1000000)::numeric(30, 6), r.attempts{member_column}
FROM ({rows}) AS r{member_join}
ORDER BY r.created_at DESC, r.id DESC
"""
# An organization's export: the member's email, joined outside the chunk's ordered, limited read
# so that its plan stays the personal one's (20,000 primary-key lookups a chunk).
_PG_CSV_MEMBER = {
    "member_column": ", NULLIF(u.email, '')",
    "member_join": f' LEFT JOIN "{User._meta.db_table}" AS u ON u.id = r.user_id',
}
_PG_CSV_NO_MEMBER = {"member_column": "", "member_join": ""}


def _log_csv_chunk_copy(
    logs: QuerySet[RequestLog],
    after: LogPosition | None,
    zone: ZoneInfo,
    member: bool = False,
) -> tuple[str, LogPosition | None]:
    """PostgreSQL: the chunk's last position (one indexed read of the chunk's keys), then COPY of
    the same rows. Both read one snapshot (REPEATABLE READ), so a call logged in between cannot
    shift the chunk and the text and the next cursor always agree."""
    if after is not None:
        logs = rows_after(logs, when=after[0], pk=after[1])
    chunk = logs[:LOG_CSV_CHUNK_ROWS]
    keys_sql, keys_params = chunk.values_list("created_at", "id").query.sql_with_params()
    rows = chunk.annotate(
        local_time=RawSQL('("usage_requestlog"."created_at" AT TIME ZONE %s)', [zone.key]),
        utc_time=RawSQL('("usage_requestlog"."created_at" AT TIME ZONE \'UTC\')', []),
    ).values_list(*_CSV_FIELDS, "local_time", "utc_time", "user_id")
    rows_sql, rows_params = rows.query.sql_with_params()
    parts = []
    # Inside a caller's transaction (tests wrap each in one) its snapshot rules instead.
    own_transaction = not connection.in_atomic_block
    # SQL compiled by the ORM and constants only; every value is a bound parameter.
    with transaction.atomic(), connection.cursor() as cursor:
        if own_transaction:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # The rows must come through the index that serves the filter, already in order. For
        # a user with a large share of the table, PostgreSQL prefers walking the time index
        # (it follows the heap's order, so it is priced cheap) and filtering by user, with an
        # incremental sort for the id tie-break. That walk reads every user's rows: at 10
        # million rows and a 20 % user, 260 ms a chunk against 30. Without incremental sorts
        # (until the commit) that plan needs a full sort and is never chosen.
        cursor.execute("SET LOCAL enable_incremental_sort = off")
        cursor.execute(
            f"SELECT created_at, id, count(*) OVER () FROM ({keys_sql}) AS chunk"  # noqa: S608
            " ORDER BY created_at, id LIMIT 1",
            keys_params,
        )
        last = cursor.fetchone()
        if last is None:
            return "", None
        # The same ordered, limited read as the keys.
        select = _PG_CSV_SELECT.format(
            rows=rows_sql, **(_PG_CSV_MEMBER if member else _PG_CSV_NO_MEMBER)
        )
        copy_sql = f"COPY ({select}) TO STDOUT (FORMAT csv)"
        with cursor.cursor.copy(copy_sql, rows_params) as copy:
            for block in copy:
                parts.append(bytes(block).decode())
    full = last[2] == LOG_CSV_CHUNK_ROWS
    return "".join(parts), ((last[0], last[1]) if full else None)


def _log_csv_chunk(
    logs: QuerySet[RequestLog],
    after: LogPosition | None,
    zone: ZoneInfo,
    member: bool = False,
) -> tuple[str, LogPosition | None]:
    """One chunk of CSV rows after `after`, and the position to continue from (None: done)."""
    if connection.vendor == "postgresql":
        return _log_csv_chunk_copy(logs, after, zone, member)
    return _log_csv_chunk_python(logs, after, zone, member)


def request_logs_csv(*, scope: Scope, filters: LogFilters) -> Iterator[str]:
    """The scope's filtered logs as CSV text, header first, one string per keyset chunk of rows
    (an organization's with the member's email last).

    Each chunk is its own short query after the last row of the one before: memory stays flat
    for any number of rows and no transaction or server-side cursor stays open meanwhile.
    """
    logs = request_logs_filtered(scope=scope, filters=filters)
    zone = user_zone(scope.user)
    member = not scope.personal
    yield _log_csv_header(log_csv_columns(scope=scope))
    after = None
    while True:
        text, after = _log_csv_chunk(logs, after, zone, member)
        if text:
            yield text
        if after is None:
            return


async def request_logs_csv_async(*, scope: Scope, filters: LogFilters) -> AsyncIterator[str]:
    """`request_logs_csv` for an ASGI response: Django would read a sync iterator whole into a
    list before sending it, so each chunk's queries run in a thread and the text is yielded here.
    """
    logs = request_logs_filtered(scope=scope, filters=filters)
    zone = user_zone(scope.user)
    member = not scope.personal
    yield _log_csv_header(log_csv_columns(scope=scope))
    after = None
    while True:
        text, after = await sync_to_async(_log_csv_chunk)(logs, after, zone, member)
        if text:
            yield text
        if after is None:
            return


def log_csv_filename(*, user: User, now: datetime | None = None) -> str:
    local = (now or timezone.now()).astimezone(user_zone(user))
    return f"tokenbyte-logs-{local:%Y%m%d-%H%M%S}.csv"


@dataclass(frozen=True)
class UsageDashboard:
    """What the dashboard shows in a scope: this month, the balance of the scope's wallet, 30
    days of spend by model, the latest calls and the unread alerts; in an organization, the
    user's own allowance there."""

    month_start: datetime
    month: RollupTotals
    # micro-USD
    balance_micros: int
    days: UsageRange
    series: UsageSeries
    recent_logs: list[RequestLog]
    alerts: list
    allowance: Allowance | None = None


DASHBOARD_RECENT_CALLS = 10
DASHBOARD_ALERTS = 10


def alerts_in_scope(*, scope: Scope) -> QuerySet[Alert]:
    """The scope's unread alerts, newest first. Personal: the user's, about their own wallet
    and keys. An organization's: its wallet's (for those who top it up) and its keys' quotas
    (every member's for owners and admins, the user's own for a member)."""
    alerts = Alert.objects.filter(read_at__isnull=True)
    if scope.personal:
        alerts = alerts.filter(user=scope.user).exclude(wallet__organization__isnull=False)
        alerts = alerts.exclude(api_token__organization__isnull=False)
    else:
        org = scope.organization_id
        shown = Q(api_token__organization_id=org)
        if not scope.sees_all:
            shown &= Q(user=scope.user)
        if scope.can(Perm.TOP_UP):
            shown |= Q(wallet__organization_id=org)
        alerts = alerts.filter(shown)
    return alerts.select_related("api_token", "group", "wallet").order_by("-created_at", "-id")


def usage_month_in_scope(*, scope: Scope, now: datetime | None = None) -> RollupTotals:
    """The scope's calls of this month in the user's zone, from the rollups (one query)."""
    month_start = month_start_for_user(user=scope.user, now=now)
    end = (now or timezone.now()) + timedelta(hours=1)
    return usage_rollup_totals_in_scope(scope=scope, start=month_start, end=end)


def usage_month_for_user(*, user: User, now: datetime | None = None) -> RollupTotals:
    """The user's personal calls of this month (`usage_month_in_scope` of the personal scope)."""
    return usage_month_in_scope(scope=Scope(user=user), now=now)


def usage_dashboard_in_scope(*, scope: Scope, now: datetime | None = None) -> UsageDashboard:
    """The dashboard's data in five queries: month totals, balance, the 30-day series by model,
    the latest calls (the scope's log index) and the unread alerts; the user's allowance in an
    organization is their membership's, already loaded."""
    user = scope.user
    days = usage_range_for_user(user=user, preset="30d", now=now)
    recent = request_logs_in_scope(scope=scope)
    if shows_member(scope):
        recent = request_logs_with_member(recent)
    return UsageDashboard(
        month_start=month_start_for_user(user=user, now=now),
        month=usage_month_in_scope(scope=scope, now=now),
        balance_micros=wallet_balance_micros_for_scope(scope=scope),
        days=days,
        series=usage_series_in_scope(scope=scope, start=days.start, end=days.end, split="model"),
        recent_logs=list(recent[:DASHBOARD_RECENT_CALLS]),
        alerts=list(alerts_in_scope(scope=scope)[:DASHBOARD_ALERTS]),
        allowance=allowance_for_scope(scope=scope),
    )


@dataclass(frozen=True)
class UsageQuery:
    """The Usage page's choices: a range of the user's days, a granularity and a split."""

    days: UsageRange
    granularity: str = "day"
    split: str | None = None


def _query_date(params: Mapping[str, str], name: str) -> date | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApplicationError(
            f"{value!r} is not a date (YYYY-MM-DD).", code="invalid_date", extra={"param": name}
        ) from None


def usage_query_parse(
    *, user: User, params: Mapping[str, str], now: datetime | None = None
) -> UsageQuery:
    """Read `range` (a preset; "custom" with `from` and `to`, YYYY-MM-DD in the user's zone),
    `granularity` (day, week, month) and `split` (model, key, group or empty) from a query."""
    granularity = params.get("granularity") or "day"
    if granularity not in GRANULARITIES:
        raise ApplicationError(
            f"Unknown granularity {granularity!r}; one of {', '.join(GRANULARITIES)}.",
            code="invalid_granularity",
            extra={"param": "granularity"},
        )
    split = params.get("split") or None
    if split is not None and split not in SPLITS:
        raise ApplicationError(
            f"Unknown split {split!r}; one of {', '.join(SPLITS)}.",
            code="invalid_split",
            extra={"param": "split"},
        )
    first_day, last_day = _query_date(params, "from"), _query_date(params, "to")
    preset = params.get("range") or ("custom" if first_day or last_day else "30d")
    days = usage_range_for_user(
        user=user, preset=preset, first_day=first_day, last_day=last_day, now=now
    )
    return UsageQuery(days=days, granularity=granularity, split=split)
