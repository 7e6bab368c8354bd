from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiToken, Organization, TokenGroup, User


class Wallet(models.Model):
    """Prepaid credit of a user or an organization.

    balance_micros always equals the sum of the wallet's ledger entries. held_micros is the credit
    reserved by calls in flight; what a new call may reserve is balance_micros - held_micros.
    """

    user = models.OneToOneField(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="wallet"
    )
    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, null=True, blank=True, related_name="wallet"
    )
    balance_micros = models.BigIntegerField(default=0)
    held_micros = models.BigIntegerField(default=0)
    # Alert the owner when the balance drops below this, micro-USD; null = no alert.
    low_balance_threshold_micros = models.BigIntegerField(null=True, blank=True)
    # Set when the low-balance alert fired; a credit that lifts the balance back to the threshold
    # clears it, so the alert fires once per crossing.
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True)
    # What a refund took back beyond the balance (the credit was already spent): the balance
    # never goes below zero, so the shortfall waits here and the next top-ups pay it first.
    debt_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance_micros__gte=0), name="wallet_balance_gte_0"),
            models.CheckConstraint(condition=Q(debt_micros__gte=0), name="wallet_debt_gte_0"),
            models.CheckConstraint(
                condition=Q(held_micros__gte=0) & Q(held_micros__lte=F("balance_micros")),
                name="wallet_held_within_balance",
            ),
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(organization__isnull=True))
                | (Q(user__isnull=True) & Q(organization__isnull=False)),
                name="wallet_has_one_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"Wallet of {self.user or self.organization}"

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


class LedgerEntry(models.Model):
    """One change of a wallet's balance. Append-only: rows are never updated or deleted."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        USAGE = "usage", "Usage debit"
        REFUND = "refund", "Refund"
        GRANT = "grant", "Grant"
        ADJUSTMENT = "adjustment", "Adjustment"

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="ledger_entries")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    # Signed micro-USD: credits positive, debits negative.
    amount_micros = models.BigIntegerField()
    balance_after_micros = models.BigIntegerField()
    # One per business event (request id, Stripe event, grant id): a replay cannot post twice.
    idempotency_key = models.CharField(max_length=200, unique=True)
    reference = models.CharField(max_length=200, blank=True)
    description = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["wallet", "-created_at"], name="ledger_wallet_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros} on wallet {self.wallet_id}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("Ledger entries are append-only and cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Ledger entries are append-only and cannot be deleted.")


class Hold(models.Model):
    """Credit and tokens reserved for one call in flight, until it settles or is released."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    request_id = models.CharField(max_length=64, unique=True)
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="holds")
    key = models.ForeignKey(
        ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="holds"
    )
    group = models.ForeignKey(
        TokenGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="holds"
    )
    # What the call was, for the log row the sweep writes when the process serving it died.
    model_id = models.CharField("model", max_length=100, blank=True)
    call_type = models.CharField(max_length=24, blank=True)
    # The member whose allowance the hold counts. No database constraint and nothing done on
    # delete: removing a member must not touch (lock) the holds of their calls in flight, whose
    # settlements lock hold then membership; a settlement of a removed member's call updates no
    # membership row.
    membership = models.ForeignKey(
        "accounts.Membership",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    amount_micros = models.BigIntegerField()
    # Part of amount_micros also reserved against the key's credit limit (0 = key has no limit).
    key_credit_micros = models.BigIntegerField(default=0)
    # Part of amount_micros also reserved against the group's credit limit (0 = none).
    group_credit_micros = models.BigIntegerField(default=0)
    # Tokens the call may use: prompt estimate + max output tokens × n.
    tokens = models.BigIntegerField(default=0)
    # Of those, reserved against the key's token quota and the group's (0 = no quota there).
    key_quota_tokens = models.BigIntegerField(default=0)
    group_quota_tokens = models.BigIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    # The lease: the process serving the call extends it while the call (or its settlement)
    # is pending, never past created_at + RELAY_HOLD_TTL_SECONDS. Once it passes, the process
    # is taken for dead and the sweep releases the hold.
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="hold_status_expires")]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gte=0) & Q(tokens__gte=0), name="hold_amounts_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"Hold {self.request_id} ({self.status})"


class TopUp(models.Model):
    """A card payment through Stripe Checkout; credited once, when Stripe confirms it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"
        REFUNDED = "refunded", "Refunded"

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="topups")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="topups")
    amount_micros = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    stripe_checkout_session_id = models.CharField(
        max_length=255, unique=True, null=True, blank=True
    )
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True)
    # Where the payer completes (or resumes) the payment, while the session is open.
    checkout_url = models.URLField(max_length=1000, blank=True)
    # Why a top-up failed or expired, in words for the owner and staff.
    status_detail = models.CharField(max_length=255, blank=True)
    # Sum of the refunds so far (micro-USD); status becomes refunded when it reaches the amount.
    refunded_micros = models.BigIntegerField(default=0)
    receipt_number = models.CharField(max_length=40, unique=True, null=True, blank=True)
    receipt_url = models.URLField(blank=True)
    receipt_emailed_at = models.DateTimeField(null=True, blank=True)
    ledger_entry = models.OneToOneField(
        LedgerEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="topup"
    )
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="topup_amount_gt_0"),
            models.CheckConstraint(
                condition=Q(refunded_micros__gte=0) & Q(refunded_micros__lte=F("amount_micros")),
                name="topup_refunded_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"Top-up {self.pk} of {self.amount_micros} ({self.status})"

    @property
    def refundable_micros(self) -> int:
        """What may still be refunded: a paid top-up stays paid through partial refunds."""
        return self.amount_micros - self.refunded_micros if self.status == self.Status.PAID else 0


class TopUpRefund(models.Model):
    """One Stripe refund of a top-up, however it started (staff in the admin, or Stripe's
    dashboard, arriving as charge.refunded): the Stripe refund id makes it count once."""

    topup = models.ForeignKey(TopUp, on_delete=models.PROTECT, related_name="refunds")
    stripe_refund_id = models.CharField(max_length=255, unique=True)
    amount_micros = models.BigIntegerField()
    # Of the amount: what the balance gave back (one refund ledger entry), and what it could not
    # (the credit was spent), added to the wallet's debt.
    debited_micros = models.BigIntegerField()
    debt_micros = models.BigIntegerField()
    ledger_entry = models.OneToOneField(
        LedgerEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="topup_refund"
    )
    reason = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0)
                & Q(debited_micros__gte=0)
                & Q(debt_micros__gte=0)
                & Q(amount_micros=F("debited_micros") + F("debt_micros")),
                name="topup_refund_parts",
            ),
        ]

    def __str__(self) -> str:
        return f"Refund {self.stripe_refund_id} of {self.amount_micros}"


class StripeEvent(models.Model):
    """A Stripe webhook event this platform processed. The row is written in the same
    transaction as the event's effects, so a stored event is a processed one, and a replay
    (same id) finds it and does nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    # The object the event is about: the Checkout Session (cs_…) or the charge (ch_…).
    object_id = models.CharField(max_length=255, blank=True)
    # What processing concluded, for staff: "credited", "closed: expired", "ignored: …".
    outcome = models.CharField(max_length=255)
    payload = models.JSONField()
    created_at = models.DateTimeField(help_text="When Stripe created the event.")
    processed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-processed_at", "-id"]
        indexes = [models.Index(fields=["object_id"], name="stripe_event_object")]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Alert(models.Model):
    """A quota or low-balance alert: emailed once per threshold and period, shown to the owner."""

    class Kind(models.TextChoices):
        TOKEN_QUOTA = "token_quota", "Key quota"
        GROUP_QUOTA = "group_quota", "Group quota"
        LOW_BALANCE = "low_balance", "Low balance"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="alerts")
    api_token = models.ForeignKey(
        ApiToken, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    group = models.ForeignKey(
        TokenGroup, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    wallet = models.ForeignKey(
        Wallet, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    threshold_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    # Identifies the quota period (e.g. its start date) so each threshold fires once per period.
    dedupe_key = models.CharField(max_length=200, unique=True)
    message = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)
    emailed_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="alert_user_created")]

    def __str__(self) -> str:
        return self.message
