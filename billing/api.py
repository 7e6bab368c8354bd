"""The billing part of /api/: the wallet and its ledger, card top-ups, and alerts.

Money is integer micro-USD (1 USD = 1_000_000), as everywhere in TokenByte; each `_micros`
amount has its exact USD string beside it (`_usd`, six places).
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from billing.models import Alert, LedgerEntry, TopUp, Wallet
from billing.selectors import (
    alerts_for_user,
    ledger_entries_for_wallet,
    topups_for_user,
    wallet_for_user,
)
from billing.services import alert_mark_read
from tokenbyte.api import ErrorSerializer, KeysetPagination, Pagination, UsdField


def _get_alert_for_user(user: User, alert_id: int) -> Alert:
    """The user's alert with this id; another user's is a 404, like a missing one."""
    return get_object_or_404(alerts_for_user(user=user), pk=alert_id)


class WalletApi(APIView):
    """Your wallet: the balance, what calls in flight hold of it, and what a new call may use."""

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

        class Meta:
            ref_name = "Wallet"

    @extend_schema(responses={200: OutputSerializer}, operation_id="wallet_retrieve")
    def get(self, request: Request) -> Response:
        # No credit yet: the first credit creates the wallet; until then it is an empty one.
        wallet = wallet_for_user(user=request.user) or Wallet(user=request.user)
        return Response(self.OutputSerializer(wallet).data)


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
        responses={200: OutputSerializer(many=True), 400: ErrorSerializer},
        operation_id="wallet_ledger_list",
    )
    def get(self, request: Request) -> Response:
        wallet = wallet_for_user(user=request.user)
        entries = (
            ledger_entries_for_wallet(wallet=wallet)
            if wallet is not None
            else LedgerEntry.objects.none()
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class TopUpListApi(APIView):
    """Your card top-ups, newest first, with their status and receipt."""

    pagination_class = Pagination

    class OutputSerializer(serializers.ModelSerializer):
        amount_micros = serializers.IntegerField(help_text="Amount paid, micro-USD.")
        amount_usd = UsdField(source="amount_micros")

        class Meta:
            model = TopUp
            ref_name = "TopUp"
            fields = [
                "id",
                "status",
                "amount_micros",
                "amount_usd",
                "receipt_number",
                "receipt_url",
                "created_at",
                "paid_at",
            ]

    @extend_schema(responses={200: OutputSerializer(many=True)}, operation_id="topups_list")
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(topups_for_user(user=request.user), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


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
