import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from billing.models import Alert, Hold, LedgerEntry, TopUp, Wallet
from billing.services import credit_grant
from tokenbyte.admin_site import URL_FIELD_OVERRIDES, ViewOnlyAdmin
from tokenbyte.errors import ApplicationError
from tokenbyte.money import MoneyError, format_usd, usd_to_micros

# Wallets listed by name on the grant page; the rest are counted.
GRANT_PAGE_LISTED_WALLETS = 50
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
    actions = ("grant_credit",)

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
        wallets = list(queryset[:GRANT_PAGE_LISTED_WALLETS])
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "Grant credit",
            "opts": self.model._meta,
            "form": form,
            "wallets": [(wallet, format_usd(wallet.balance_micros)) for wallet in wallets],
            "more_count": max(queryset.count() - len(wallets), 0),
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/billing/wallet/grant_credit.html", context)

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


@admin.register(TopUp)
class TopUpAdmin(ViewOnlyAdmin):
    """Top-ups are written by the Stripe flow; a status typed in here would move no money."""

    list_display = (
        "pk",
        "wallet",
        "user",
        "amount",
        "status",
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

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj: TopUp) -> str:
        return format_usd(obj.amount_micros)


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
