import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db.models import Q, QuerySet, Sum
from django.urls import reverse

from accounts.models import Membership, Organization, User
from accounts.scope import PERMISSIONS, Perm, Scope
from billing.models import Alert, LedgerEntry, TopUp, Wallet
from tokenbyte.errors import ApplicationError
from tokenbyte.filters import filter_error, filter_time, user_zone
from tokenbyte.keyset import KeysetPage, keyset_page
from tokenbyte.money import MICROS_PER_USD, format_usd


def wallet_ledger_sum_micros(*, wallet: Wallet) -> int:
    """Sum of the wallet's ledger; equals wallet.balance_micros whenever the books are right."""
    total = LedgerEntry.objects.filter(wallet=wallet).aggregate(total=Sum("amount_micros"))["total"]
    return total or 0


def alerts_for_user(*, user: User, unread_only: bool = False) -> QuerySet[Alert]:
    """The user's quota and low-balance alerts, newest first, as the dashboard lists them."""
    alerts = Alert.objects.filter(user=user).select_related("api_token", "group", "wallet")
    if unread_only:
        alerts = alerts.filter(read_at__isnull=True)
    return alerts.order_by("-created_at", "-id")


def wallet_for_user(*, user: User) -> Wallet | None:
    """The user's own wallet, or None before the first credit created one."""
    return Wallet.objects.filter(user=user).first()


def wallet_balance_micros_for_user(*, user: User) -> int:
    """The balance of the user's own wallet in micro-USD, 0 without a wallet (one query)."""
    balance = Wallet.objects.filter(user=user).values_list("balance_micros", flat=True).first()
    return balance or 0


def ledger_entries_for_wallet(*, wallet: Wallet) -> QuerySet[LedgerEntry]:
    """The wallet's ledger, newest first; each row carries its running balance."""
    return LedgerEntry.objects.filter(wallet=wallet).order_by("-created_at", "-id")


def topups_for_user(*, user: User) -> QuerySet[TopUp]:
    """The card top-ups of the user's own wallet, newest first (not those the user paid into an
    organization's wallet: they are the organization's)."""
    return TopUp.objects.filter(wallet__user=user).order_by("-created_at", "-id")


# --- the scope's wallet (personal, or an organization's) ------------------------------------------


def wallet_for_scope(*, scope: Scope) -> Wallet | None:
    """The wallet a scope spends from: the user's own (None before the first credit created it)
    or the organization's (made with the organization)."""
    if scope.personal:
        return wallet_for_user(user=scope.user)
    return Wallet.objects.filter(organization_id=scope.organization_id).first()


def wallet_balance_micros_for_scope(*, scope: Scope) -> int:
    """The balance of the scope's wallet in micro-USD, 0 without a wallet (one query): what the
    console's header shows."""
    if scope.personal:
        return wallet_balance_micros_for_user(user=scope.user)
    balance = (
        Wallet.objects.filter(organization_id=scope.organization_id)
        .values_list("balance_micros", flat=True)
        .first()
    )
    return balance or 0


def topups_for_scope(*, scope: Scope) -> QuerySet[TopUp]:
    """The card top-ups of the scope's wallet, newest first, with their payer: the user's own,
    or every top-up of the organization's wallet, whoever paid, for the roles that may top it up
    (Perm.TOP_UP); none for the others."""
    if scope.personal:
        topups = topups_for_user(user=scope.user)
    elif scope.can(Perm.TOP_UP):
        topups = TopUp.objects.filter(wallet__organization_id=scope.organization_id)
    else:
        topups = TopUp.objects.none()
    return topups.select_related("user").order_by("-created_at", "-id")


def topups_visible_to_user(*, user: User) -> QuerySet[TopUp]:
    """Every top-up the user may open, whatever the console's scope: those of their own wallet,
    and those of the wallets of organizations where their role may top up (a receipt emailed to
    a payer opens wherever they are). One query."""
    managed = Membership.objects.filter(user=user, role__in=PERMISSIONS[Perm.TOP_UP]).values(
        "organization_id"
    )
    return (
        TopUp.objects.filter(Q(wallet__user=user) | Q(wallet__organization_id__in=managed))
        .select_related("user", "wallet__organization")
        .order_by("-created_at", "-id")
    )


@dataclass(frozen=True)
class Allowance:
    """A member's monthly allowance from an organization's wallet, for the wallet page."""

    # micro-USD; None = no cap
    monthly_micros: int | None
    # micro-USD spent plus held by calls in flight, this period
    used_micros: int
    period_start: date | None

    @property
    def left_micros(self) -> int | None:
        if self.monthly_micros is None:
            return None
        return max(0, self.monthly_micros - self.used_micros)

    @property
    def percent(self) -> int | None:
        """Share of the allowance used, 0 to 100 (for the meter); None without a cap."""
        if self.monthly_micros is None:
            return None
        if self.monthly_micros == 0:
            return 100
        return min(100, self.used_micros * 100 // self.monthly_micros)


def allowance_for_scope(*, scope: Scope) -> Allowance | None:
    """The user's allowance in the scope's organization (None in personal scope), as their
    membership counts it."""
    membership = scope.membership
    if membership is None:
        return None
    return Allowance(
        monthly_micros=membership.monthly_allowance_micros,
        used_micros=membership.allowance_used_micros,
        period_start=membership.allowance_period_start,
    )


# --- card top-ups --------------------------------------------------------------------------------


def _usd_setting_micros(name: str) -> int:
    """A USD amount setting ("5", "10000", "12.50") in micro-USD, read with Decimal."""
    try:
        value = Decimal(str(getattr(settings, name)).strip())
    except InvalidOperation:
        raise ApplicationError(f"settings.{name} is not a USD amount") from None
    return int(value * MICROS_PER_USD)


def topup_limits_micros() -> tuple[int, int]:
    """The smallest and the largest card top-up (TOPUP_MIN_USD, TOPUP_MAX_USD), micro-USD."""
    return _usd_setting_micros("TOPUP_MIN_USD"), _usd_setting_micros("TOPUP_MAX_USD")


def topup_presets_micros() -> list[int]:
    """The wallet page's preset amounts (TOPUP_PRESETS_USD, comma-separated), micro-USD, in
    their order; presets outside the top-up limits are left out."""
    low, high = topup_limits_micros()
    presets = []
    for part in str(settings.TOPUP_PRESETS_USD).split(","):
        if not part.strip():
            continue
        try:
            micros = int(Decimal(part.strip()) * MICROS_PER_USD)
        except InvalidOperation:
            raise ApplicationError(
                f"settings.TOPUP_PRESETS_USD: {part!r} is not an amount"
            ) from None
        if low <= micros <= high and micros not in presets:
            presets.append(micros)
    return presets


# Card amounts are whole cents: Stripe charges in cents.
MICROS_PER_CENT = MICROS_PER_USD // 100


def topup_amount_error(*, amount_micros: int) -> str | None:
    """Why a top-up of this amount cannot be made (in words for the payer), or None.

    The same rules topup_checkout_start enforces; the form and the API check first so that the
    payer reads the limits in the answer."""
    low, high = topup_limits_micros()
    if amount_micros % MICROS_PER_CENT:
        return "Enter whole cents, at most 2 decimals (for example 25.50)."
    if amount_micros < low:
        return f"The smallest top-up is {format_usd(low)}."
    if amount_micros > high:
        return f"The largest top-up is {format_usd(high)}."
    return None


def topup_return_urls(*, base_url: str) -> tuple[str, str]:
    """Where Stripe Checkout sends the payer back (success, cancel), on the console at
    base_url ("https://host"). Stripe fills the success URL's placeholder with the session id;
    it fills nothing in the cancel URL, to which topup_checkout_start adds the TopUp's id."""
    return (
        base_url + reverse("topup_success") + "?session_id={CHECKOUT_SESSION_ID}",
        base_url + reverse("topup_cancel"),
    )


# A top-up with a receipt: paid, or paid and then refunded in full.
RECEIPT_STATUSES = (TopUp.Status.PAID, TopUp.Status.REFUNDED)


def topup_receipts_for_user(*, user: User) -> QuerySet[TopUp]:
    """The user's top-ups that have a receipt (paid or refunded), with the payer loaded."""
    return (
        topups_for_user(user=user)
        .filter(status__in=RECEIPT_STATUSES, receipt_number__isnull=False)
        .select_related("user")
    )


# --- the ledger: filters, pages, CSV -------------------------------------------------------------

LEDGER_PAGE_SIZE = 100
# GET parameters of the ledger filters (the page and the CSV link share them).
LEDGER_FILTER_PARAMS = ("kind", "from", "to")


@dataclass(frozen=True)
class LedgerFilters:
    kind: str = ""
    # Both aware; `since` is inclusive, `until` exclusive.
    since: datetime | None = None
    until: datetime | None = None

    @property
    def active(self) -> bool:
        return self != LedgerFilters()


def ledger_filters_parse(*, user: User, params: Mapping[str, str]) -> LedgerFilters:
    """The ledger filters of a query string; empty values are unset. Dates are days in the
    user's time zone, `to` included. Raises ApplicationError(code="invalid_filter", param=…)."""
    values = {name: str(params.get(name) or "").strip() for name in LEDGER_FILTER_PARAMS}
    if values["kind"] and values["kind"] not in LedgerEntry.Kind.values:
        kinds = ", ".join(LedgerEntry.Kind.values)
        raise filter_error("kind", f"kind is one of {kinds}.")
    zone = user_zone(user)
    since = until = None
    if values["from"]:
        since = filter_time(param="from", value=values["from"], zone=zone, end=False)
    if values["to"]:
        until = filter_time(param="to", value=values["to"], zone=zone, end=True)
    if since and until and since >= until:
        raise filter_error("to", "'Until' must not be before 'From'.")
    return LedgerFilters(kind=values["kind"], since=since, until=until)


def ledger_entries_filtered(*, wallet: Wallet, filters: LedgerFilters) -> QuerySet[LedgerEntry]:
    """The wallet's entries that pass the filters, newest first (the ledger_wallet_created
    index), with the staff user who made each manual entry."""
    entries = ledger_entries_for_wallet(wallet=wallet).select_related("created_by")
    if filters.kind:
        entries = entries.filter(kind=filters.kind)
    if filters.since is not None:
        entries = entries.filter(created_at__gte=filters.since)
    if filters.until is not None:
        entries = entries.filter(created_at__lt=filters.until)
    return entries


# A page of the ledger: `rows` and the `next_cursor` (None on the last page).
LedgerPage = KeysetPage


def ledger_page(
    entries: QuerySet[LedgerEntry], *, cursor: str = "", size: int = LEDGER_PAGE_SIZE
) -> LedgerPage:
    """One page of `ledger_entries_filtered(...)` after the cursor, in one query (keyset:
    a page deep in a long ledger costs what the first one does)."""
    return keyset_page(entries, cursor=cursor, size=size)


LEDGER_CSV_COLUMNS = [
    "time",
    "kind",
    "description",
    "reference",
    "amount_usd",
    "balance_after_usd",
    "created_by",
]


class _Line:
    """csv.writer's file: hands back the one line it was given."""

    def write(self, text: str) -> str:
        return text


def _csv_cell(value: str) -> str:
    """Text a spreadsheet will not run as a formula."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _usd_exact(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def ledger_csv(*, user: User, wallet: Wallet | None, filters: LedgerFilters) -> Iterator[str]:
    """The filtered ledger as CSV lines, header first: time in the user's zone (ISO 8601 with
    its offset), kind, description, reference, exact USD amounts, and the staff email of a
    manual entry. A ledger is small next to the logs: one query, read in chunks."""
    writer = csv.writer(_Line(), lineterminator="\n")
    yield writer.writerow(LEDGER_CSV_COLUMNS)
    if wallet is None:
        return
    zone = user_zone(user)
    entries = ledger_entries_filtered(wallet=wallet, filters=filters)
    for entry in entries.iterator(chunk_size=2000):
        yield writer.writerow(
            [
                entry.created_at.astimezone(zone).isoformat(timespec="seconds"),
                entry.kind,
                _csv_cell(entry.description),
                _csv_cell(entry.reference),
                _usd_exact(entry.amount_micros),
                _usd_exact(entry.balance_after_micros),
                entry.created_by.email if entry.created_by else "",
            ]
        )


def ledger_csv_filename(
    *, user: User, now: datetime, organization: Organization | None = None
) -> str:
    whose = f"{organization.slug}-" if organization is not None else ""
    return f"tokenbyte-{whose}ledger-{now.astimezone(user_zone(user)):%Y%m%d-%H%M%S}.csv"
