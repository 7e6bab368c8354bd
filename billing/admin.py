import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from billing.models import Alert, Hold, LedgerEntry, StripeEvent, TopUp, TopUpRefund, Wallet
from billing.payments import topup_refund
from billing.services import credit_grant, wallet_adjust
from tokenbyte.admin_site import URL_FIELD_OVERRIDES, ViewOnlyAdmin
from tokenbyte.errors import ApplicationError
from tokenbyte.money import MoneyError, format_usd, usd_to_micros

# Objects listed by name on an action's form page; the rest are counted.
ACTION_PAGE_LISTED = 50
WALLET_OWNER_RELATED = ("wallet__user", "wallet__organization")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class GrantCreditForm(forms.Form):
    amount_usd = forms.CharField(
        label="Amount (USD)", max_length=32, help_text="Up to 6 decimals, e.g. 12.50"
    )
    reason = forms.CharField(max_length=255, help_text="Shown on the ledger entry.")
    # Generated when the page is shown: a double-submitted form posts the same ledger
    # idempotency keys, so it cannot credit twice.
    grant_id = forms.UUIDField(widget=forms.HiddenInput)

    def clean_amount_usd(self) -> int:
        try:
            return usd_to_micros(self.cleaned_data["amount_usd"])
        except MoneyError as exc:
            raise forms.ValidationError(str(exc)) from exc


class AdjustBalanceForm(GrantCreditForm):
    amount_usd = forms.CharField(
        label="Change (USD)",
        max_length=32,
        help_text="Signed, up to 6 decimals: 5.00 adds, -5.00 takes away (never below what "
        "calls in flight hold).",
    )


class RefundForm(forms.Form):
    amount_usd = forms.CharField(
        label="Refund (USD)", max_length=32, help_text="Whole cents, at most what is left."
    )
    reason = forms.CharField(max_length=255, help_text="Kept with the refund.")

    def clean_amount_usd(self) -> int:
        return GrantCreditForm.clean_amount_usd(self)


def money_action_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    form: forms.Form,
    action: str,
    title: str,
    intro: str,
    detail,
) -> TemplateResponse:
    """The form page of an admin action that moves money: the objects it applies to (each with
    `detail(obj)`), the form, and the selection carried through the POST."""
    objects = list(queryset[:ACTION_PAGE_LISTED])
    request.current_app = model_admin.admin_site.name
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "action": action,
        "opts": model_admin.model._meta,
        "form": form,
        "items": [(obj, detail(obj)) for obj in objects],
        "more_count": max(queryset.count() - len(objects), 0),
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/billing/money_action.html", context)


def _balance(wallet: Wallet) -> str:
    return f"balance {format_usd(wallet.balance_micros)}"


class WalletOwnerFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("user", "User"), ("organization", "Organization")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Wallet]) -> QuerySet[Wallet]:
        if self.value() == "user":
            return queryset.filter(user__isnull=False)
        if self.value() == "organization":
            return queryset.filter(organization__isnull=False)
        return queryset


@admin.register(Wallet)
class WalletAdmin(admin.ModelAdmin):
    """Balances change only through ledger entries (the Grant credit action, top-ups, usage)."""

    list_display = ("__str__", "balance", "held", "available", "low_balance_alert", "created_at")
    list_select_related = ("user", "organization")
    list_filter = (WalletOwnerFilter, "created_at")
    search_fields = ("=user__email", "organization__name", "=organization__slug")
    search_help_text = "The user's exact email, the organization's name or slug"
    raw_id_fields = ("user", "organization")
    readonly_fields = ("balance_micros", "held_micros", "ledger", "created_at")
    fields = (
        "user",
        "organization",
        "balance_micros",
        "held_micros",
        "low_balance_threshold_micros",
        "ledger",
        "created_at",
    )
    actions = ("grant_credit", "adjust_balance")

    def get_readonly_fields(self, request: HttpRequest, obj: Wallet | None = None) -> tuple:
        if obj is None:
            return self.readonly_fields
        # A wallet's history belongs to its owner; it never moves to someone else.
        return ("user", "organization", *self.readonly_fields)

    def has_delete_permission(self, request: HttpRequest, obj: Wallet | None = None) -> bool:
        return False

    @admin.display(description="balance", ordering="balance_micros")
    def balance(self, obj: Wallet) -> str:
        return format_usd(obj.balance_micros)

    @admin.display(description="held", ordering="held_micros")
    def held(self, obj: Wallet) -> str:
        return format_usd(obj.held_micros)

    @admin.display(description="available")
    def available(self, obj: Wallet) -> str:
        return format_usd(obj.available_micros)

    @admin.display(description="low balance alert", ordering="low_balance_threshold_micros")
    def low_balance_alert(self, obj: Wallet) -> str:
        if obj.low_balance_threshold_micros is None:
            return "-"
        return format_usd(obj.low_balance_threshold_micros)

    @admin.display(description="ledger")
    def ledger(self, obj: Wallet) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:billing_ledgerentry_changelist", current_app=self.admin_site.name)
        return format_html('<a href="{}?wallet__id__exact={}">Ledger entries</a>', url, obj.pk)

    @admin.action(description="Grant credit", permissions=["change"])
    def grant_credit(
        self, request: HttpRequest, queryset: QuerySet[Wallet]
    ) -> TemplateResponse | None:
        if "apply" in request.POST:
            form = GrantCreditForm(request.POST)
            if form.is_valid():
                self._grant(request, queryset, form.cleaned_data)
                return None  # back to the changelist, where the messages show
        else:
            form = GrantCreditForm(initial={"grant_id": uuid.uuid4()})
        intro = (
            "Each wallet below receives the amount as one grant entry in its ledger, recorded "
            "under your name."
        )
        return money_action_page(
            self, request, queryset, form=form, action="grant_credit", title="Grant credit",
            intro=intro, detail=_balance,
        )  # fmt: skip

    @admin.action(description="Adjust balance", permissions=["change"])
    def adjust_balance(
        self, request: HttpRequest, queryset: QuerySet[Wallet]
    ) -> TemplateResponse | None:
        if "apply" in request.POST:
            form = AdjustBalanceForm(request.POST)
            if form.is_valid():
                self._adjust(request, queryset, form.cleaned_data)
                return None
        else:
            form = AdjustBalanceForm(initial={"grant_id": uuid.uuid4()})
        intro = (
            "Each wallet below changes by the amount, as one adjustment entry in its ledger "
            "recorded under your name, with the reason."
        )
        return money_action_page(
            self, request, queryset, form=form, action="adjust_balance", title="Adjust balance",
            intro=intro, detail=_balance,
        )  # fmt: skip

    def _adjust(self, request: HttpRequest, queryset: QuerySet[Wallet], data: dict) -> None:
        done = 0
        for wallet in queryset:
            try:
                wallet_adjust(
                    wallet=wallet,
                    amount_micros=data["amount_usd"],
                    reason=data["reason"],
                    staff=request.user,
                    idempotency_key=f"admin-adjust:{data['grant_id']}:{wallet.pk}",
                )
            except ApplicationError as exc:
                self.message_user(request, f"{wallet}: {exc.message}", messages.ERROR)
            else:
                done += 1
        if done:
            self.message_user(
                request,
                f"Adjusted {_plural(done, 'wallet')} by {format_usd(data['amount_usd'])}.",
                messages.SUCCESS,
            )

    def _grant(self, request: HttpRequest, queryset: QuerySet[Wallet], data: dict) -> None:
        amount_micros = data["amount_usd"]
        granted = replayed = 0
        for wallet in queryset:
            key = f"admin-grant:{data['grant_id']}:{wallet.pk}"
            # Only for the message: credit_grant itself ignores a replayed key.
            if LedgerEntry.objects.filter(idempotency_key=key).exists():
                replayed += 1
                continue
            try:
                credit_grant(
                    wallet=wallet,
                    amount_micros=amount_micros,
                    reason=data["reason"],
                    created_by=request.user,
                    idempotency_key=key,
                )
            except ApplicationError as exc:
                self.message_user(request, f"{wallet}: {exc.message}", messages.ERROR)
            else:
                granted += 1
        if granted:
            self.message_user(
                request,
                f"Granted {format_usd(amount_micros)} to {_plural(granted, 'wallet')}.",
                messages.SUCCESS,
            )
        if replayed:
            self.message_user(
                request,
                f"{_plural(replayed, 'wallet')} already had this grant; nothing was added.",
                messages.WARNING,
            )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ViewOnlyAdmin):
    list_display = (
        "created_at",
        "wallet",
        "kind",
        "amount",
        "balance_after",
        "description",
        "reference",
        "created_by",
    )
    list_select_related = (*WALLET_OWNER_RELATED, "created_by")
    list_filter = ("kind", "created_at")
    search_fields = (
        "=wallet__user__email",
        "=wallet__organization__slug",
        "=reference",
        "=idempotency_key",
    )
    search_help_text = "Exact owner email, organization slug, reference or idempotency key"
    # A huge, append-only table: no count(*) of all rows on every page.
    show_full_result_count = False

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: LedgerEntry) -> str:
        return format_usd(obj.amount_micros)

    @admin.display(description="balance after")
    def balance_after(self, obj: LedgerEntry) -> str:
        return format_usd(obj.balance_after_micros)


@admin.register(Hold)
class HoldAdmin(ViewOnlyAdmin):
    list_display = (
        "request_id",
        "wallet",
        "key",
        "model_id",
        "group",
        "amount",
        "tokens",
        "status",
        "created_at",
        "expires_at",
        "closed_at",
    )
    list_select_related = (*WALLET_OWNER_RELATED, "key", "group")
    list_filter = ("status", "call_type", "created_at")
    search_fields = ("=request_id", "=wallet__user__email", "=wallet__organization__slug")
    search_help_text = "Exact request id, owner email or organization slug"
    # One row per relayed call.
    show_full_result_count = False

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: Hold) -> str:
        return format_usd(obj.amount_micros)


class TopUpRefundInline(admin.TabularInline):
    model = TopUpRefund
    fields = ("created_at", "stripe_refund_id", "amount", "debited", "debt", "reason", "created_by")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: TopUp | None = None) -> bool:
        return False

    @admin.display(description="amount")
    def amount(self, obj: TopUpRefund) -> str:
        return format_usd(obj.amount_micros)

    @admin.display(description="taken from the balance")
    def debited(self, obj: TopUpRefund) -> str:
        return format_usd(obj.debited_micros)

    @admin.display(description="added to debt")
    def debt(self, obj: TopUpRefund) -> str:
        return format_usd(obj.debt_micros)


@admin.register(TopUp)
class TopUpAdmin(ViewOnlyAdmin):
    """Top-ups are written by the Stripe flow; a status typed in here would move no money.
    Staff refund one with the Refund action (Stripe refunds the card, the ledger follows)."""

    list_display = (
        "pk",
        "wallet",
        "user",
        "amount",
        "status",
        "refunded",
        "receipt_number",
        "created_at",
        "paid_at",
    )
    list_select_related = (*WALLET_OWNER_RELATED, "user")
    list_filter = ("status", "created_at", "paid_at")
    search_fields = (
        "=user__email",
        "=receipt_number",
        "=stripe_checkout_session_id",
        "=stripe_payment_intent_id",
    )
    search_help_text = "Exact email, receipt number, or Stripe session / payment intent id"
    date_hierarchy = "created_at"
    formfield_overrides = URL_FIELD_OVERRIDES
    inlines = (TopUpRefundInline,)
    actions = ("refund",)

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: TopUp) -> str:
        return format_usd(obj.amount_micros)

    @admin.display(description="refunded", ordering="refunded_micros")
    def refunded(self, obj: TopUp) -> str:
        return format_usd(obj.refunded_micros) if obj.refunded_micros else "-"

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.change_topup")

    @admin.action(description="Refund", permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: QuerySet[TopUp]) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Refund one top-up at a time.", messages.ERROR)
            return None
        topup = queryset.get()
        if "apply" in request.POST:
            form = RefundForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                try:
                    booked = topup_refund(
                        topup=topup,
                        amount_micros=data["amount_usd"],
                        reason=data["reason"],
                        staff=request.user,
                    )
                except ApplicationError as exc:
                    form.add_error("amount_usd", exc.message)
                else:
                    debt = format_usd(booked.debt_micros)
                    debt = (
                        f"; {debt} was spent already: the wallet's debt"
                        if booked.debt_micros
                        else ""
                    )
                    self.message_user(
                        request,
                        f"Refunded {format_usd(booked.amount_micros)} of top-up {topup.pk}{debt}.",
                        messages.SUCCESS,
                    )
                    return None
        else:
            initial = f"{topup.refundable_micros / 1_000_000:.2f}"
            form = RefundForm(initial={"amount_usd": initial})
        intro = (
            "Stripe refunds the card; the balance gives back what it has (one refund entry under "
            "your name), and what was already spent becomes the wallet's debt, paid first from "
            "its next top-up."
        )
        return money_action_page(
            self, request, queryset, form=form, action="refund", title="Refund",
            intro=intro, detail=lambda obj: f"{format_usd(obj.refundable_micros)} refundable",
        )  # fmt: skip


@admin.register(StripeEvent)
class StripeEventAdmin(ViewOnlyAdmin):
    """Every webhook event applied, with what it did; a replay of one of these changes nothing."""

    list_display = ("processed_at", "type", "event_id", "object_id", "outcome")
    list_filter = ("type", "processed_at")
    search_fields = ("=event_id", "=object_id")
    search_help_text = "Exact event id or object id (cs_…, ch_…)"
    date_hierarchy = "processed_at"


@admin.register(Alert)
class AlertAdmin(ViewOnlyAdmin):
    list_display = (
        "created_at",
        "kind",
        "user",
        "message",
        "threshold_percent",
        "emailed_at",
        "read_at",
    )
    list_select_related = ("user",)
    raw_id_fields = ("user", "api_token", "group", "wallet")
    list_filter = ("kind", "created_at", "emailed_at", "read_at")
    search_fields = ("=user__email", "message")
    search_help_text = "The user's exact email or words of the message"
    date_hierarchy = "created_at"
