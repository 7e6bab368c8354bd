from django.urls import path

from billing import api, views

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = [
    path("wallet/", api.WalletApi.as_view(), name="api-wallet"),
    path("wallet/ledger/", api.LedgerListApi.as_view(), name="api-wallet-ledger"),
    path("topups/", api.TopUpListApi.as_view(), name="api-topups"),
    path("alerts/", api.AlertListApi.as_view(), name="api-alerts"),
    path("alerts/<int:alert_id>/read/", api.AlertReadApi.as_view(), name="api-alert-read"),
]
