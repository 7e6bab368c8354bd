"""The wallet pages: balance, card top-ups (Stripe Checkout), the ledger, receipts.

They follow the console's scope: the user's own wallet, or the organization's. There, owners and
admins (Perm.TOP_UP) see and do everything; a member sees the balance and their own monthly
allowance, and the ledger, top-ups and receipts are a 404 for them.
"""

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from accounts.scope import Perm, Scope, request_scope
from billing import payments
from billing.forms import ThresholdForm, TopUpForm
from billing.models import LedgerEntry, TopUp
from billing.receipts import receipt_pdf, topup_receipt
from billing.selectors import (
    LEDGER_FILTER_PARAMS,
    LEDGER_PAGE_SIZE,
    RECEIPT_STATUSES,
    LedgerFilters,
    LedgerPage,
    allowance_for_scope,
    ledger_csv,
    ledger_csv_filename,
    ledger_entries_filtered,
    ledger_filters_parse,
    ledger_page,
    topup_limits_micros,
    topup_presets_micros,
    topup_return_urls,
    topups_for_scope,
    topups_visible_to_user,
    wallet_for_scope,
)
from billing.services import wallet_get_or_create, wallet_low_balance_threshold_set
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd

# The newest top-ups the wallet page lists (all of them: GET /api/topups/).
TOPUP_LIST_SIZE = 50
# What the success page says about a pending top-up, by the state Stripe reports.
CHECKOUT_STATES = {
    "paid": "Payment received, confirming…",
    "processing": ("Your bank payment is processing; we will credit your balance when it clears."),
    "open": "Not paid yet.",
    "expired": "This checkout expired before it was paid; nothing was charged.",
}
# The success page reloads itself while Stripe says paid and the webhook is on its way.
CONFIRMING_REFRESH_SECONDS = 2


def _get_topup_for_user(
    user: User, *, topup_id: int | None = None, session_id: str | None = None
) -> TopUp:
    """The top-up with this id or Checkout Session id among those the user may open: their own
    wallet's, and those of the organizations where they may top up (owners, admins), whatever
    the console's scope, so that a receipt or Stripe's return finds its page. Any other top-up
    is a 404, like a missing one."""
    lookup = (
        {"pk": topup_id} if topup_id is not None else {"stripe_checkout_session_id": session_id}
    )
    if not any(lookup.values()):
        raise Http404("No such top-up.")
    try:
        return topups_visible_to_user(user=user).get(**lookup)
    except TopUp.DoesNotExist:
        raise Http404("No such top-up.") from None


def _get_receipt_topup_for_user(user: User, topup_id: int) -> TopUp:
    """The user's top-up with a receipt (paid or refunded); any other is a 404."""
    topup = _get_topup_for_user(user, topup_id=topup_id)
    if topup.status not in RECEIPT_STATUSES or not topup.receipt_number:
        raise Http404("This top-up has no receipt.")
    return topup


def _refused(request: HttpRequest, scope: Scope) -> HttpResponse | None:
    """The 403 page for a member who may not top up the organization's wallet or set its alert
    (Perm.TOP_UP); None when the user may."""
    if scope.can(Perm.TOP_UP):
        return None
    message = (
        f"Your role ({scope.role}) in {scope.organization} does not allow this: its owners and "
        "admins top up its wallet and set its alert."
    )
    return render(request, "accounts/organization_denied.html", {"message": message}, status=403)


def _ledger_query(request: HttpRequest, **changes: str) -> str:
    """The ledger filters as a query string (kept in the pager and CSV links)."""
    params = {name: request.GET.get(name, "") for name in LEDGER_FILTER_PARAMS}
    params.update(changes)
    return urlencode({name: value for name, value in params.items() if value})


def _wallet_page(
    request: HttpRequest,
    *,
    topup_form: TopUpForm | None = None,
    threshold_form: ThresholdForm | None = None,
) -> HttpResponse:
    user = request.user
    scope = request_scope(request)
    wallet = wallet_for_scope(scope=scope)
    # The ledger, top-ups and alert are the wallet's managers' (a member sees the balance).
    manages = scope.can(Perm.TOP_UP)
    ledger_error = None
    filters = LedgerFilters()
    page = LedgerPage(rows=[], next_cursor=None)
    try:
        filters = ledger_filters_parse(user=user, params=request.GET)
        if wallet is not None and manages:
            entries = ledger_entries_filtered(wallet=wallet, filters=filters)
            page = ledger_page(entries, cursor=request.GET.get("cursor", ""))
    except ApplicationError as exc:
        ledger_error = exc
    low, high = topup_limits_micros()
    threshold = wallet.low_balance_threshold_micros if wallet else None
    context = {
        "scope": scope,
        "organization": scope.organization,
        "manages": manages,
        "allowance": allowance_for_scope(scope=scope),
        "wallet": wallet,
        "entries": page.rows,
        "topups": list(topups_for_scope(scope=scope)[:TOPUP_LIST_SIZE]) if manages else [],
        "topup_list_size": TOPUP_LIST_SIZE,
        "page_size": LEDGER_PAGE_SIZE,
        "presets": [
            {"micros": micros, "value": format_usd(micros)[1:]} for micros in topup_presets_micros()
        ],
        "topup_min_micros": low,
        "topup_max_micros": high,
        "topup_form": topup_form or TopUpForm(),
        "threshold_form": threshold_form or ThresholdForm.for_threshold(threshold),
        "threshold_micros": threshold,
        "kinds": LedgerEntry.Kind.choices,
        "filters": filters,
        "values": {name: request.GET.get(name, "") for name in LEDGER_FILTER_PARAMS},
        "ledger_error": ledger_error,
        "is_first_page": not request.GET.get("cursor"),
        "next_query": _ledger_query(request, cursor=page.next_cursor) if page.next_cursor else "",
        "first_query": _ledger_query(request),
    }
    return render(request, "billing/wallet.html", context)


@login_required
@require_GET
def wallet(request: HttpRequest) -> HttpResponse:
    return _wallet_page(request)


@login_required
@require_POST
def topup_create(request: HttpRequest) -> HttpResponse:
    """Start a card top-up: a Stripe Checkout Session, and the payer is sent to it (303)."""
    scope = request_scope(request)
    if refused := _refused(request, scope):
        return refused
    form = TopUpForm(request.POST)
    if form.is_valid():
        base_url = request.build_absolute_uri("/").rstrip("/")
        success_url, cancel_url = topup_return_urls(base_url=base_url)
        try:
            topup = payments.topup_checkout_start(
                user=request.user,
                amount_micros=form.cleaned_data["amount_usd"],
                success_url=success_url,
                cancel_url=cancel_url,
                scope=scope,
            )
        except ApplicationError as exc:
            form.add_service_error(exc)
        else:
            return HttpResponseRedirect(topup.checkout_url, status=303)
    return _wallet_page(request, topup_form=form)


@login_required
@require_POST
def threshold_set(request: HttpRequest) -> HttpResponse:
    """The low-balance alert threshold (empty turns the alert off)."""
    scope = request_scope(request)
    if refused := _refused(request, scope):
        return refused
    wallet = wallet_for_scope(scope=scope)
    form = ThresholdForm(request.POST)
    if not form.is_valid():
        return _wallet_page(request, threshold_form=form)
    threshold = form.threshold_micros()
    if wallet is None:
        # Only a personal wallet waits for its first credit; an organization's exists.
        wallet = wallet_get_or_create(user=request.user)
    wallet_low_balance_threshold_set(wallet=wallet, threshold_micros=threshold)
    whose = "your balance" if scope.personal else f"the balance of {scope.organization}"
    if threshold is None:
        messages.success(request, "The low-balance alert is off.")
    else:
        messages.success(
            request, f"You will be alerted when {whose} drops below {format_usd(threshold)}."
        )
    return HttpResponseRedirect(reverse("wallet") + "#alert-threshold", status=303)


@login_required
@require_GET
def ledger_export_csv(request: HttpRequest) -> HttpResponse:
    """The filtered ledger of the scope's wallet as a CSV download (a 404 for a member of the
    organization: its ledger is its owners' and admins')."""
    scope = request_scope(request)
    if not scope.can(Perm.TOP_UP):
        raise Http404("No such ledger.")
    try:
        filters = ledger_filters_parse(user=request.user, params=request.GET)
    except ApplicationError as exc:
        return HttpResponseBadRequest(exc.message, content_type="text/plain; charset=utf-8")
    body = ledger_csv(user=request.user, wallet=wallet_for_scope(scope=scope), filters=filters)
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    filename = ledger_csv_filename(
        user=request.user, now=timezone.now(), organization=scope.organization
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def topup_success(request: HttpRequest) -> HttpResponse:
    """Where Stripe sends the payer after paying: the real state of that top-up. Only the
    webhook credits; until it has, this page asks Stripe and says what it knows."""
    topup = _get_topup_for_user(request.user, session_id=request.GET.get("session_id", ""))
    state = ""
    state_error = ""
    if topup.status == TopUp.Status.PENDING:
        try:
            state = payments.topup_checkout_refresh(topup=topup)
        except ApplicationError as exc:
            state_error = exc.message
        topup.refresh_from_db()
    context = {
        "topup": topup,
        "wallet": topup.wallet,
        "organization": topup.wallet.organization,
        "state": state,
        "state_text": CHECKOUT_STATES.get(state, ""),
        "state_error": state_error,
        # Paid at Stripe, credit on its way (or Stripe out of reach): look again shortly.
        "refresh_seconds": (
            CONFIRMING_REFRESH_SECONDS
            if topup.status == TopUp.Status.PENDING and (state == "paid" or state_error)
            else None
        ),
        "has_receipt": topup.status in RECEIPT_STATUSES and bool(topup.receipt_number),
    }
    response = render(request, "billing/topup_success.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def topup_cancel(request: HttpRequest) -> HttpResponse:
    """Where Stripe sends a payer who went back without paying: the session is closed, so a
    later click on the old payment page cannot charge."""
    topup_id = request.GET.get("topup", "")
    if not topup_id.isdigit():
        raise Http404("No such top-up.")
    topup = _get_topup_for_user(request.user, topup_id=int(topup_id))
    cancel_error = ""
    if topup.status == TopUp.Status.PENDING:
        try:
            topup = payments.topup_checkout_cancel(topup=topup)
        except ApplicationError as exc:
            cancel_error = exc.message
    context = {
        "topup": topup,
        "organization": topup.wallet.organization,
        "cancel_error": cancel_error,
        "has_receipt": topup.status in RECEIPT_STATUSES and bool(topup.receipt_number),
    }
    response = render(request, "billing/topup_cancel.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def receipt(request: HttpRequest, topup_id: int) -> HttpResponse:
    """A paid top-up's receipt as a printable page."""
    topup = _get_receipt_topup_for_user(request.user, topup_id)
    return render(request, "billing/receipt.html", {"receipt": topup_receipt(topup=topup)})


@login_required
@require_GET
def receipt_pdf_download(request: HttpRequest, topup_id: int) -> HttpResponse:
    """The same receipt as a PDF download."""
    topup = _get_receipt_topup_for_user(request.user, topup_id)
    document = topup_receipt(topup=topup)
    response = HttpResponse(
        receipt_pdf(topup=topup, receipt=document), content_type="application/pdf"
    )
    response["Content-Disposition"] = f'attachment; filename="{document.filename}"'
    return response
