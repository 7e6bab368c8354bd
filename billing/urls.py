from django.urls import path

from billing import api, views

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
    path("wallet/topup/", views.topup_create, name="topup_create"),
    path("wallet/topup/success/", views.topup_success, name="topup_success"),
    path("wallet/topup/cancel/", views.topup_cancel, name="topup_cancel"),
    path("wallet/threshold/", views.threshold_set, name="wallet_threshold"),
    path("wallet/ledger.csv", views.ledger_export_csv, name="wallet_ledger_csv"),
    path("wallet/receipts/<int:topup_id>/", views.receipt, name="topup_receipt"),
    path(
        "wallet/receipts/<int:topup_id>.pdf", views.receipt_pdf_download, name="topup_receipt_pdf"
    ),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = [
    path("wallet/", api.WalletApi.as_view(), name="api-wallet"),
    path("wallet/ledger/", api.LedgerListApi.as_view(), name="api-wallet-ledger"),
    path("topups/", api.TopUpListApi.as_view(), name="api-topups"),
    path("topups/<int:topup_id>/", api.TopUpDetailApi.as_view(), name="api-topup"),
    path("alerts/", api.AlertListApi.as_view(), name="api-alerts"),
    path("alerts/<int:alert_id>/read/", api.AlertReadApi.as_view(), name="api-alert-read"),
]
