"""The billing part of /api/: the wallet and its ledger, card top-ups, and alerts.

Money is integer micro-USD (1 USD = 1_000_000), as everywhere in TokenByte; each `_micros`
amount has its exact USD string beside it (`_usd`, six places).

The wallet and top-up endpoints take `?organization=<id>`: the organization's wallet instead of
yours. There, owners and admins read and do everything; a member reads the balance and their own
allowance, the ledger and top-ups answer 404 and the writes 403 (`permission_denied`). An
organization you are not a member of is a 404.
"""

from django.http import Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.scope import Perm, Scope
from billing import payments
from billing.models import Alert, LedgerEntry, TopUp, Wallet
from billing.selectors import (
    RECEIPT_STATUSES,
    alerts_for_user,
    allowance_for_scope,
    ledger_entries_for_wallet,
    topup_amount_error,
    topup_limits_micros,
    topup_return_urls,
    topups_for_scope,
    wallet_for_scope,
)
from billing.services import (
    alert_mark_read,
    wallet_get_or_create,
    wallet_low_balance_threshold_set,
)
from tokenbyte.api import (
    ErrorSerializer,
    KeysetPagination,
    Pagination,
    UsdField,
    organization_parameter,
    request_api_scope,
)
from tokenbyte.errors import ApplicationError
from tokenbyte.money import MICROS_PER_USD, format_usd


def _managed(scope: Scope) -> Scope:
    """The scope, if its wallet's ledger and top-ups are the caller's to read; else a 404 (an
    organization's member sees neither)."""
    if not scope.can(Perm.TOP_UP):
        raise Http404("No such ledger.")
    return scope


def _get_topup_in_scope(scope: Scope, topup_id: int) -> TopUp:
    """The scope's top-up with this id; another wallet's is a 404, like a missing one."""
    return get_object_or_404(topups_for_scope(scope=_managed(scope)), pk=topup_id)


def _get_alert_for_user(user: User, alert_id: int) -> Alert:
    """The user's alert with this id; another user's is a 404, like a missing one."""
    return get_object_or_404(alerts_for_user(user=user), pk=alert_id)


class AllowanceOutput(serializers.Serializer):
    monthly_allowance_micros = serializers.IntegerField(
        source="monthly_micros",
        allow_null=True,
        help_text="What your calls may spend from the organization's wallet a month, micro-USD; "
        "null = no cap.",
    )
    allowance_used_micros = serializers.IntegerField(
        source="used_micros",
        help_text="Spent this month plus held by your calls in flight, micro-USD.",
    )
    allowance_period_start = serializers.DateField(
        source="period_start",
        allow_null=True,
        help_text="The first day of the month counted, in the organization's time zone.",
    )
    monthly_allowance_usd = UsdField(source="monthly_micros", allow_null=True)
    allowance_used_usd = UsdField(source="used_micros")

    class Meta:
        ref_name = "MemberAllowance"


class WalletApi(APIView):
    """Your wallet (or `?organization=`'s): the balance, what calls in flight hold of it, and
    what a new call may use; in an organization, also your own monthly allowance there."""

    class OutputSerializer(serializers.Serializer):
        balance_micros = serializers.IntegerField(help_text="Balance, micro-USD.")
        held_micros = serializers.IntegerField(
            help_text="Reserved by calls in flight until they settle, micro-USD."
        )
        available_micros = serializers.IntegerField(
            help_text="What new calls may reserve: balance - held, micro-USD."
        )
        low_balance_threshold_micros = serializers.IntegerField(
            allow_null=True,
            help_text="An alert is raised when the balance drops below this, micro-USD; "
            "null = no low-balance alert.",
        )
        balance_usd = UsdField(source="balance_micros")
        held_usd = UsdField(source="held_micros")
        available_usd = UsdField(source="available_micros")
        low_balance_threshold_usd = UsdField(source="low_balance_threshold_micros", allow_null=True)
        organization = serializers.IntegerField(
            source="organization_id",
            required=False,
            help_text="With ?organization=: the organization's id (absent for your own wallet).",
        )
        allowance = AllowanceOutput(
            required=False,
            help_text="With ?organization=: your monthly allowance there (absent for your own "
            "wallet).",
        )

        class Meta:
            ref_name = "Wallet"

        def to_representation(self, wallet: Wallet) -> dict:
            scope = self.context.get("scope")
            data = {
                name: value
                for name, value in super().to_representation(wallet).items()
                if name not in ("organization", "allowance")
            }
            if scope is not None and not scope.personal:
                data["organization"] = scope.organization_id
                data["allowance"] = AllowanceOutput(allowance_for_scope(scope=scope)).data
            return data

    class InputSerializer(serializers.Serializer):
        low_balance_threshold_micros = serializers.IntegerField(
            allow_null=True,
            min_value=0,
            help_text="Alert when the balance drops below this, micro-USD; null turns the "
            "low-balance alert off.",
        )

        class Meta:
            ref_name = "WalletUpdate"

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        responses={200: OutputSerializer, 404: ErrorSerializer},
        operation_id="wallet_retrieve",
    )
    def get(self, request: Request) -> Response:
        scope = request_api_scope(request)
        # No credit yet: the first credit creates the wallet; until then it is an empty one.
        wallet = wallet_for_scope(scope=scope) or _empty_wallet(scope)
        return Response(self.OutputSerializer(wallet, context={"scope": scope}).data)

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
        operation_id="wallet_update",
    )
    def patch(self, request: Request) -> Response:
        scope = request_api_scope(request)
        scope.require(Perm.TOP_UP)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        wallet = wallet_for_scope(scope=scope) or _wallet_create(scope)
        wallet = wallet_low_balance_threshold_set(
            wallet=wallet, threshold_micros=data.validated_data["low_balance_threshold_micros"]
        )
        return Response(self.OutputSerializer(wallet, context={"scope": scope}).data)


def _empty_wallet(scope: Scope) -> Wallet:
    if scope.personal:
        return Wallet(user=scope.user)
    return Wallet(organization=scope.organization)


def _wallet_create(scope: Scope) -> Wallet:
    if scope.personal:
        return wallet_get_or_create(user=scope.user)
    return wallet_get_or_create(organization=scope.organization)


class LedgerListApi(APIView):
    """Every change of your balance, newest first (top-ups, usage, refunds, grants, adjustments);
    each row has the balance right after it. Paged by cursor: follow `next`."""

    pagination_class = KeysetPagination

    class OutputSerializer(serializers.ModelSerializer):
        amount_micros = serializers.IntegerField(
            help_text="Signed micro-USD: credits positive, debits negative."
        )
        balance_after_micros = serializers.IntegerField(
            help_text="The balance right after this entry, micro-USD."
        )
        amount_usd = UsdField(source="amount_micros")
        balance_after_usd = UsdField(source="balance_after_micros")

        class Meta:
            model = LedgerEntry
            ref_name = "LedgerEntry"
            fields = [
                "id",
                "kind",
                "amount_micros",
                "amount_usd",
                "balance_after_micros",
                "balance_after_usd",
                "reference",
                "description",
                "created_at",
            ]

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        responses={200: OutputSerializer(many=True), 400: ErrorSerializer, 404: ErrorSerializer},
        operation_id="wallet_ledger_list",
    )
    def get(self, request: Request) -> Response:
        wallet = wallet_for_scope(scope=_managed(request_api_scope(request)))
        entries = (
            ledger_entries_for_wallet(wallet=wallet)
            if wallet is not None
            else LedgerEntry.objects.none()
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class TopUpOutput(serializers.ModelSerializer):
    amount_micros = serializers.IntegerField(help_text="Amount paid, micro-USD.")
    amount_usd = UsdField(source="amount_micros")
    refunded_micros = serializers.IntegerField(help_text="Refunded so far, micro-USD.")
    refunded_usd = UsdField(source="refunded_micros")
    status_detail = serializers.CharField(
        help_text="Why a top-up failed or expired, in words; empty otherwise."
    )
    checkout_url = serializers.SerializerMethodField(
        help_text="Stripe's payment page, while the top-up is pending: send the payer there."
    )
    receipt_number = serializers.CharField(
        allow_null=True, help_text="Set once paid, like TB-202612-000123."
    )
    receipt_url = serializers.SerializerMethodField(
        help_text="The printable receipt (console page, needs a signed-in session); null "
        "until paid."
    )
    receipt_pdf_url = serializers.SerializerMethodField(
        help_text="The receipt as a PDF (console, signed-in session); null until paid."
    )

    class Meta:
        model = TopUp
        ref_name = "TopUp"
        fields = [
            "id",
            "status",
            "status_detail",
            "amount_micros",
            "amount_usd",
            "refunded_micros",
            "refunded_usd",
            "checkout_url",
            "receipt_number",
            "receipt_url",
            "receipt_pdf_url",
            "created_at",
            "paid_at",
        ]

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    def _has_receipt(self, topup: TopUp) -> bool:
        return topup.status in RECEIPT_STATUSES and bool(topup.receipt_number)

    def get_checkout_url(self, topup: TopUp) -> str | None:
        if topup.status != TopUp.Status.PENDING or not topup.checkout_url:
            return None
        return topup.checkout_url

    def get_receipt_url(self, topup: TopUp) -> str | None:
        if not self._has_receipt(topup):
            return None
        return self._absolute(reverse("topup_receipt", args=[topup.pk]))

    def get_receipt_pdf_url(self, topup: TopUp) -> str | None:
        if not self._has_receipt(topup):
            return None
        return self._absolute(reverse("topup_receipt_pdf", args=[topup.pk]))


def _payments_error(exc: ApplicationError) -> ApplicationError:
    """Stripe out of reach is the server's trouble, not the request's: a 503."""
    if exc.code == "payments_unavailable":
        return ApplicationError(exc.message, code=exc.code, extra={**exc.extra, "status": 503})
    if exc.code == "permission_denied":
        return ApplicationError(exc.message, code=exc.code, extra={**exc.extra, "status": 403})
    if exc.code == "invalid_amount" and not exc.extra.get("param"):
        return ApplicationError(
            exc.message, code=exc.code, extra={**exc.extra, "param": "amount_micros"}
        )
    return exc


class TopUpListApi(APIView):
    """Your card top-ups, newest first, with their status and receipt; or start one: a Stripe
    Checkout Session of `amount_micros` (or `amount_usd`), in whole cents within the limits.
    Send the payer to `checkout_url`; the balance is credited when Stripe confirms the payment.
    With `?organization=`, the organization's wallet (owners and admins): every member's top-ups
    of it, and a new one credits it, paid by you."""

    pagination_class = Pagination
    OutputSerializer = TopUpOutput

    class InputSerializer(serializers.Serializer):
        amount_micros = serializers.IntegerField(
            required=False, min_value=1, help_text="Amount, micro-USD (whole cents)."
        )
        amount_usd = serializers.DecimalField(
            required=False,
            max_digits=18,
            decimal_places=6,
            help_text='Amount in US dollars ("20.00"), instead of amount_micros.',
        )

        class Meta:
            ref_name = "TopUpCreate"

        def validate(self, attrs: dict) -> dict:
            if ("amount_micros" in attrs) == ("amount_usd" in attrs):
                raise serializers.ValidationError("Send either amount_micros or amount_usd.")
            field = "amount_micros" if "amount_micros" in attrs else "amount_usd"
            if field == "amount_usd":
                micros = attrs["amount_usd"] * MICROS_PER_USD
                attrs["amount_micros"] = int(micros)
            problem = topup_amount_error(amount_micros=attrs["amount_micros"])
            if problem:
                low, high = topup_limits_micros()
                raise serializers.ValidationError(
                    {field: f"{problem} (Limits: {format_usd(low)} to {format_usd(high)}.)"}
                )
            return attrs

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        responses={200: TopUpOutput(many=True), 404: ErrorSerializer},
        operation_id="topups_list",
    )
    def get(self, request: Request) -> Response:
        topups = topups_for_scope(scope=_managed(request_api_scope(request)))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(topups, request, view=self)
        output = TopUpOutput(page, many=True, context={"request": request})
        return paginator.get_paginated_response(output.data)

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        request=InputSerializer,
        responses={
            201: TopUpOutput,
            400: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
            503: ErrorSerializer,
        },
        operation_id="topups_create",
    )
    def post(self, request: Request) -> Response:
        scope = request_api_scope(request)
        scope.require(Perm.TOP_UP)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        base_url = request.build_absolute_uri("/").rstrip("/")
        success_url, cancel_url = topup_return_urls(base_url=base_url)
        try:
            topup = payments.topup_checkout_start(
                user=request.user,
                amount_micros=data.validated_data["amount_micros"],
                success_url=success_url,
                cancel_url=cancel_url,
                scope=scope,
            )
        except ApplicationError as exc:
            raise _payments_error(exc) from exc
        body = TopUpOutput(topup, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED)


class TopUpDetailApi(APIView):
    """One of your card top-ups (or, with `?organization=`, of the organization's wallet): its
    status (and why it failed or expired), refunds and receipt links."""

    @extend_schema(
        parameters=[organization_parameter("wallet")],
        responses={200: TopUpOutput, 404: ErrorSerializer},
        operation_id="topups_retrieve",
    )
    def get(self, request: Request, topup_id: int) -> Response:
        topup = _get_topup_in_scope(request_api_scope(request), topup_id)
        return Response(TopUpOutput(topup, context={"request": request}).data)


class AlertOutput(serializers.ModelSerializer):
    key_id = serializers.IntegerField(
        source="api_token_id", allow_null=True, help_text="The API key of a key-quota alert."
    )
    group_id = serializers.IntegerField(
        allow_null=True, help_text="The key group of a group-quota alert."
    )
    threshold_percent = serializers.IntegerField(
        allow_null=True, help_text="The quota percentage reached, for quota alerts."
    )

    class Meta:
        model = Alert
        ref_name = "Alert"
        fields = [
            "id",
            "kind",
            "message",
            "key_id",
            "group_id",
            "threshold_percent",
            "created_at",
            "emailed_at",
            "read_at",
        ]


class AlertListApi(APIView):
    """Your quota and low-balance alerts, newest first; `?unread=1` for the unread ones only."""

    pagination_class = Pagination

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "unread",
                OpenApiTypes.BOOL,
                description="Only the alerts not marked read yet.",
            )
        ],
        responses={200: AlertOutput(many=True)},
        operation_id="alerts_list",
    )
    def get(self, request: Request) -> Response:
        unread = request.query_params.get("unread", "").lower() in {"1", "true", "yes"}
        alerts = alerts_for_user(user=request.user, unread_only=unread)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(alerts, request, view=self)
        return paginator.get_paginated_response(AlertOutput(page, many=True).data)


class AlertReadApi(APIView):
    """Mark one of your alerts read. Marking it again keeps the first read time."""

    @extend_schema(
        request=None,
        responses={200: AlertOutput, 404: ErrorSerializer},
        operation_id="alerts_read",
    )
    def post(self, request: Request, alert_id: int) -> Response:
        alert = _get_alert_for_user(request.user, alert_id)
        alert_mark_read(alert=alert)
        return Response(AlertOutput(alert).data)
