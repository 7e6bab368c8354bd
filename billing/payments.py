"""Card top-ups through Stripe Checkout, and their refunds: the services of the payment flow
(split from services.py, which holds the ledger and the call settlement they build on).

The wallet is credited only from Stripe's signed webhook (`stripe_event_process`), never from the
payer's return to the success page. Every event is stored in the transaction that applies it, so
a stored event is a processed one; a replay, a second event for the same session, or two
deliveries at once credit once (the event id is unique, the TopUp row is locked, and the ledger
entry's idempotency key is the session's). An event that fails to apply rolls back whole and the
webhook answers 5xx, so Stripe delivers it again.

Refunds, whether staff started them in the admin or in Stripe's dashboard, are one TopUpRefund per
Stripe refund id. The balance never goes below zero: a refund takes back what the balance has
(one refund ledger entry) and records the rest as the wallet's debt, which the next top-ups pay
first (an adjustment entry each).
"""

import functools
import json
import logging
from datetime import UTC, datetime

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from accounts.scope import Perm, Scope
from billing.locks import wallets_lock
from billing.models import LedgerEntry, StripeEvent, TopUp, TopUpRefund, Wallet
from billing.selectors import topup_limits_micros
from billing.services import ledger_post, wallet_get_or_create
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd

logger = logging.getLogger(__name__)

MICROS_PER_CENT = 10_000
CURRENCY = "usd"
PRODUCT_NAME = "TokenByte account credit"
SEND_RECEIPT = "tasks.tasks.send_topup_receipt"


@functools.cache
def _client(api_key: str, api_base: str) -> stripe.StripeClient:
    addresses = {"api": api_base} if api_base else None
    # Network retries are safe: every write carries an idempotency key.
    return stripe.StripeClient(api_key, base_addresses=addresses, max_network_retries=2)


def stripe_client() -> stripe.StripeClient:
    """One client per process and configuration (STRIPE_API_BASE points it at the fake)."""
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _cents(micros: int) -> int:
    return micros // MICROS_PER_CENT


# --- Checkout ---


def topup_amount_validate(*, amount_micros: int) -> None:
    """A top-up is whole cents between TOPUP_MIN_USD and TOPUP_MAX_USD."""
    low, high = topup_limits_micros()
    if amount_micros % MICROS_PER_CENT:
        raise ApplicationError(
            "Enter an amount in whole cents.", code="invalid_amount", extra={"param": "amount"}
        )
    if not low <= amount_micros <= high:
        raise ApplicationError(
            f"Top up between {format_usd(low)} and {format_usd(high)}.",
            code="invalid_amount",
            extra={"param": "amount"},
        )


def topup_checkout_start(
    *,
    user: User,
    amount_micros: int,
    success_url: str,
    cancel_url: str,
    scope: Scope | None = None,
) -> TopUp:
    """A pending TopUp and its Stripe Checkout Session; send the payer to `topup.checkout_url`.

    The wallet is the scope's: the user's own (no scope, or personal), or an organization's,
    which only its owners and admins top up (Perm.TOP_UP; others get "permission_denied"). The
    user is the payer either way: Stripe's receipt email and ours go to them, and the webhook
    credits the TopUp's wallet.

    The TopUp is written first, so the session carries its id (client_reference_id and
    metadata, and `topup=<id>` added to cancel_url, where Stripe fills in no session id) and the
    create call its idempotency key: a retried create gets the same session.
    Payment methods are not listed: Checkout offers what the Stripe account has switched on
    (cards, Google Pay, Apple Pay, Link).
    """
    organization = None
    if scope is not None and not scope.personal:
        if scope.user.pk != user.pk:
            raise ValueError("the payer is the scope's user")
        scope.require(Perm.TOP_UP)
        organization = scope.organization
    topup_amount_validate(amount_micros=amount_micros)
    if organization is None:
        wallet = wallet_get_or_create(user=user)
    else:
        wallet = wallet_get_or_create(organization=organization)
    topup = TopUp.objects.create(wallet=wallet, user=user, amount_micros=amount_micros)
    metadata = {"topup_id": str(topup.pk), "user_id": str(user.pk)}
    if organization is not None:
        metadata["organization_id"] = str(organization.pk)
    product = PRODUCT_NAME if organization is None else f"{PRODUCT_NAME} for {organization.name}"
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": CURRENCY,
                    "unit_amount": _cents(amount_micros),
                    "product_data": {"name": product},
                },
            }
        ],
        "client_reference_id": str(topup.pk),
        "metadata": metadata,
        # On the payment intent too, so its charge (and charge.refunded) names the top-up.
        "payment_intent_data": {"metadata": metadata},
        "customer_email": user.email,
        "success_url": success_url,
        "cancel_url": f"{cancel_url}{'&' if '?' in cancel_url else '?'}topup={topup.pk}",
    }
    try:
        session = stripe_client().v1.checkout.sessions.create(
            params=params, options={"idempotency_key": f"topup-checkout:{topup.pk}"}
        )
    except stripe.StripeError as exc:
        logger.warning("checkout session for top-up %s failed: %s", topup.pk, exc)
        topup.status = TopUp.Status.FAILED
        topup.status_detail = "The payment provider could not be reached; nothing was charged."
        topup.save(update_fields=["status", "status_detail"])
        raise ApplicationError(
            "Payments are unavailable right now and nothing was charged; try again in a minute.",
            code="payments_unavailable",
        ) from exc
    topup.stripe_checkout_session_id = session.id
    topup.checkout_url = session.url or ""
    topup.save(update_fields=["stripe_checkout_session_id", "checkout_url"])
    return topup


def topup_checkout_cancel(*, topup: TopUp) -> TopUp:
    """The payer cancelled at checkout: expire the session so it can no longer be paid, and
    close the TopUp. A session Stripe already completed is left to its webhook."""
    if topup.status != TopUp.Status.PENDING or not topup.stripe_checkout_session_id:
        return topup
    try:
        stripe_client().v1.checkout.sessions.expire(topup.stripe_checkout_session_id)
    except stripe.InvalidRequestError:
        # Not open any more: paid (or paying) after all, or expired already; events tell.
        return topup
    except stripe.StripeError as exc:
        logger.warning("expiring session of top-up %s failed: %s", topup.pk, exc)
        return topup
    _topup_close(
        session_id=topup.stripe_checkout_session_id,
        status=TopUp.Status.EXPIRED,
        detail="Cancelled at checkout; nothing was charged.",
    )
    topup.refresh_from_db()
    return topup


def topup_checkout_refresh(*, topup: TopUp) -> str:
    """Where a pending top-up's payment stands, asked of Stripe (for the success page): "open",
    "processing" (an async payment under way), "paid" (the webhook is on its way) or "expired".
    It never credits; only the webhook does."""
    if topup.status != TopUp.Status.PENDING or not topup.stripe_checkout_session_id:
        return topup.status
    try:
        session = stripe_client().v1.checkout.sessions.retrieve(topup.stripe_checkout_session_id)
    except stripe.StripeError as exc:
        logger.warning("retrieving session of top-up %s failed: %s", topup.pk, exc)
        return "open"
    if session.status == "expired":
        return "expired"
    if session.payment_status == "paid":
        return "paid"
    if session.status == "complete":
        return "processing"
    return "open"


# --- webhook events ---


def stripe_event_process(*, payload: bytes, signature: str) -> StripeEvent:
    """Verify one webhook delivery and apply its event, once.

    Raises ApplicationError("invalid_signature") for a forged, altered or stale delivery (the
    webhook answers 400). Any other failure rolls everything back and propagates (5xx), so Stripe
    retries. Returns the stored event; for a replay, the one stored the first time.
    """
    try:
        stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except stripe.SignatureVerificationError as exc:
        raise ApplicationError(
            "The Stripe-Signature header does not verify.", code="invalid_signature"
        ) from exc
    except ValueError as exc:
        raise ApplicationError("The payload is not JSON.", code="invalid_payload") from exc
    event = json.loads(payload)
    data = event.get("data", {}).get("object", {})
    with transaction.atomic():
        try:
            # A savepoint: a concurrent delivery of the same event waits here on the unique
            # index until the first commits, then finds it processed.
            with transaction.atomic():
                record = StripeEvent.objects.create(
                    event_id=event["id"],
                    type=event["type"],
                    object_id=str(data.get("id", "")),
                    outcome="processing",
                    payload=event,
                    created_at=datetime.fromtimestamp(event.get("created", 0), tz=UTC),
                )
        except IntegrityError:
            return StripeEvent.objects.get(event_id=event["id"])
        handler = EVENT_HANDLERS.get(event["type"])
        record.outcome = handler(data) if handler else "ignored: not an event this platform uses"
        record.save(update_fields=["outcome"])
    logger.info("stripe event %s %s: %s", record.type, record.event_id, record.outcome)
    return record


def _session_completed(session: dict) -> str:
    status = session.get("payment_status")
    if status == "paid":
        return _topup_credit(session)
    if status == "unpaid":
        # An async method (a bank debit): the money arrives, or not, in a later event.
        return _topup_note_processing(session)
    return f"ignored: payment_status {status}"


def _session_async_failed(session: dict) -> str:
    return _topup_close(
        session_id=session["id"],
        status=TopUp.Status.FAILED,
        detail="The bank payment failed; nothing was charged.",
    )


def _session_expired(session: dict) -> str:
    return _topup_close(
        session_id=session["id"],
        status=TopUp.Status.EXPIRED,
        detail="The checkout expired before payment; nothing was charged.",
    )


def _charge_refunded(charge: dict) -> str:
    topup = _topup_for_charge(charge)
    if topup is None:
        return "ignored: no top-up for this charge"
    refunds = (charge.get("refunds") or {}).get("data")
    if refunds is None:
        # API versions that do not expand the list: ask for it.
        listed = stripe_client().v1.refunds.list(
            params={"payment_intent": charge["payment_intent"], "limit": 100}
        )
        refunds = [refund.to_dict() for refund in listed.data]
    recorded = 0
    for refund in refunds:
        if refund.get("status") not in ("succeeded", "pending"):
            continue
        _, created = topup_refund_record(
            topup_id=topup.pk,
            stripe_refund_id=refund["id"],
            amount_micros=refund["amount"] * MICROS_PER_CENT,
            reason=refund.get("reason") or "Refunded in Stripe",
        )
        recorded += created
    return f"refunds recorded: {recorded}"


EVENT_HANDLERS = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": lambda session: _topup_credit(session),
    "checkout.session.async_payment_failed": _session_async_failed,
    "checkout.session.expired": _session_expired,
    "charge.refunded": _charge_refunded,
}


def _topup_locked(session_id: str) -> TopUp | None:
    return TopUp.objects.select_for_update().filter(stripe_checkout_session_id=session_id).first()


def _topup_credit(session: dict) -> str:
    """Credit a paid session's TopUp with the amount the TopUp recorded, once."""
    topup = _topup_locked(session["id"])
    if topup is None:
        # A session this platform did not create (another app on the same Stripe account).
        return "ignored: no top-up for this session"
    if topup.status in (TopUp.Status.PAID, TopUp.Status.REFUNDED):
        return "already credited"
    paid_micros = int(session.get("amount_total") or 0) * MICROS_PER_CENT
    if session.get("currency") != CURRENCY or paid_micros != topup.amount_micros:
        logger.error(
            "top-up %s: Stripe reports %s %s, the top-up recorded %s; not credited",
            topup.pk, session.get("amount_total"), session.get("currency"), topup.amount_micros,
        )  # fmt: skip
        topup.status = TopUp.Status.FAILED
        topup.status_detail = (
            "The payment did not match the top-up and was not credited; support will contact you."
        )
        topup.save(update_fields=["status", "status_detail"])
        return "rejected: amount or currency does not match the top-up"
    now = timezone.now()
    receipt = f"TB-{now:%Y%m}-{topup.pk:06d}"
    entry, _ = ledger_post(
        wallet=topup.wallet,
        kind=LedgerEntry.Kind.TOPUP,
        amount_micros=topup.amount_micros,
        idempotency_key=f"stripe:checkout:{session['id']}",
        reference=session["id"],
        description=f"Top-up, receipt {receipt}",
    )
    topup.status = TopUp.Status.PAID
    topup.status_detail = ""
    topup.paid_at = now
    topup.ledger_entry = entry
    topup.receipt_number = receipt
    topup.stripe_payment_intent_id = session.get("payment_intent") or ""
    topup.checkout_url = ""
    topup.save()
    recovered = _debt_recover(topup)
    _queue_receipt(topup.pk)
    suffix = f"; {format_usd(recovered)} of refund debt paid" if recovered else ""
    return f"credited {format_usd(topup.amount_micros)}{suffix}"


def _topup_note_processing(session: dict) -> str:
    topup = _topup_locked(session["id"])
    if topup is None:
        return "ignored: no top-up for this session"
    if topup.status != TopUp.Status.PENDING:
        return f"ignored: top-up already {topup.status}"
    topup.stripe_payment_intent_id = session.get("payment_intent") or ""
    topup.status_detail = "The bank payment is processing; the balance is credited when it clears."
    topup.checkout_url = ""
    topup.save(update_fields=["stripe_payment_intent_id", "status_detail", "checkout_url"])
    return "pending: async payment processing"


def _topup_close(*, session_id: str, status: str, detail: str) -> str:
    with transaction.atomic():
        topup = _topup_locked(session_id)
        if topup is None:
            return "ignored: no top-up for this session"
        if topup.status != TopUp.Status.PENDING:
            return f"ignored: top-up already {topup.status}"
        topup.status = status
        topup.status_detail = detail
        topup.checkout_url = ""
        topup.save(update_fields=["status", "status_detail", "checkout_url"])
    return f"closed: {status}"


def _queue_receipt(topup_id: int) -> None:
    # By name, after the commit, like the alert emails: a broker that is down leaves the receipt
    # unsent (receipt_emailed_at empty) rather than failing the webhook after the credit.
    from tokenbyte.celery import task_queue

    transaction.on_commit(lambda: task_queue(SEND_RECEIPT, topup_id), robust=True)


# --- refunds and debt ---


def _topup_for_charge(charge: dict) -> TopUp | None:
    topup = TopUp.objects.filter(stripe_payment_intent_id=charge.get("payment_intent") or "-")
    found = topup.first()
    if found is None:
        topup_id = (charge.get("metadata") or {}).get("topup_id", "")
        found = TopUp.objects.filter(pk=int(topup_id)).first() if topup_id.isdigit() else None
    return found


def topup_refund_record(
    *,
    topup_id: int,
    stripe_refund_id: str,
    amount_micros: int,
    reason: str = "",
    created_by: User | None = None,
) -> tuple[TopUpRefund, bool]:
    """Book one Stripe refund of a top-up, once per refund id: take back what the balance has
    (a refund ledger entry) and record the rest as the wallet's debt. Returns (refund, created)."""
    with transaction.atomic():
        topup = TopUp.objects.select_for_update().get(pk=topup_id)
        existing = TopUpRefund.objects.filter(stripe_refund_id=stripe_refund_id).first()
        if existing is not None:
            return existing, False
        left = topup.amount_micros - topup.refunded_micros
        if amount_micros > left:
            # Stripe refunds at most the charge; more than is left here means books out of step.
            logger.error(
                "refund %s of %s exceeds what top-up %s has left (%s); booking what is left",
                stripe_refund_id, amount_micros, topup.pk, left,
            )  # fmt: skip
            amount_micros = left
        wallet = wallets_lock([topup.wallet_id]).get()
        debit = max(0, min(amount_micros, wallet.balance_micros - wallet.held_micros))
        debt = amount_micros - debit
        entry = None
        if debit:
            entry, _ = ledger_post(
                wallet=wallet,
                kind=LedgerEntry.Kind.REFUND,
                amount_micros=-debit,
                idempotency_key=f"stripe:refund:{stripe_refund_id}",
                reference=stripe_refund_id,
                description=f"Refund of top-up {topup.receipt_number or topup.pk}",
                created_by=created_by,
            )
        if debt:
            Wallet.objects.filter(pk=wallet.pk).update(debt_micros=F("debt_micros") + debt)
        refund = TopUpRefund.objects.create(
            topup=topup,
            stripe_refund_id=stripe_refund_id,
            amount_micros=amount_micros,
            debited_micros=debit,
            debt_micros=debt,
            ledger_entry=entry,
            reason=reason[:255],
            created_by=created_by,
        )
        topup.refunded_micros += amount_micros
        if topup.refunded_micros == topup.amount_micros:
            topup.status = TopUp.Status.REFUNDED
        topup.save(update_fields=["refunded_micros", "status"])
    return refund, True


def topup_refund(*, topup: TopUp, amount_micros: int, reason: str, staff: User) -> TopUpRefund:
    """Staff refund a paid top-up (the admin's action): Stripe refunds the card, then the refund
    is booked at once; the charge.refunded event that follows finds it booked."""
    if topup.status != TopUp.Status.PAID or not topup.stripe_payment_intent_id:
        raise ApplicationError("Only a paid card top-up can be refunded.", code="not_refundable")
    if amount_micros <= 0 or amount_micros % MICROS_PER_CENT:
        raise ApplicationError("Refund a positive amount in whole cents.", code="invalid_amount")
    if amount_micros > topup.refundable_micros:
        raise ApplicationError(
            f"At most {format_usd(topup.refundable_micros)} is left to refund.",
            code="invalid_amount",
        )
    reason = reason.strip() or "Refunded by staff"
    try:
        refund = stripe_client().v1.refunds.create(
            params={
                "payment_intent": topup.stripe_payment_intent_id,
                "amount": _cents(amount_micros),
                "metadata": {"topup_id": str(topup.pk), "staff": staff.email},
            },
            # The same form sent twice (a double click) is the same refund.
            options={"idempotency_key": f"topup-refund:{topup.pk}:{topup.refunded_micros}"},
        )
    except stripe.StripeError as exc:
        raise ApplicationError(
            f"Stripe refused the refund: {getattr(exc, 'user_message', None) or exc}",
            code="refund_failed",
        ) from exc
    booked, _ = topup_refund_record(
        topup_id=topup.pk,
        stripe_refund_id=refund.id,
        amount_micros=refund.amount * MICROS_PER_CENT,
        reason=reason,
        created_by=staff,
    )
    return booked


def _debt_recover(topup: TopUp) -> int:
    """Pay the wallet's refund debt from a top-up just credited; returns what was paid."""
    wallet = wallets_lock([topup.wallet_id]).get()
    recovered = min(wallet.debt_micros, topup.amount_micros)
    if not recovered:
        return 0
    ledger_post(
        wallet=wallet,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=-recovered,
        idempotency_key=f"debt:topup:{topup.pk}",
        reference=topup.stripe_checkout_session_id or "",
        description=f"Refund debt paid from top-up {topup.receipt_number}",
    )
    Wallet.objects.filter(pk=wallet.pk).update(debt_micros=F("debt_micros") - recovered)
    return recovered
