from django.urls import path

from usage import api, views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("usage/", views.usage, name="usage"),
    path("usage/export.csv", views.usage_export_csv, name="usage_csv"),
    path("logs/", views.log_list, name="logs"),
    path("logs/export.csv", views.log_export_csv, name="logs_csv"),
    path("logs/<str:request_id>/", views.log_detail, name="log_detail"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = [
    # --- logs ---
    path("logs/", api.LogListApi.as_view(), name="api-logs"),
    path("logs/export.csv", api.LogExportApi.as_view(), name="api-logs-csv"),
    path("logs/<str:request_id>/", api.LogDetailApi.as_view(), name="api-log-detail"),
    # --- usage stats ---
    path("usage/summary/", api.UsageSummaryApi.as_view(), name="api-usage-summary"),
    path("usage/series/", api.UsageSeriesApi.as_view(), name="api-usage-series"),
    path("usage/breakdown/", api.UsageBreakdownApi.as_view(), name="api-usage-breakdown"),
    path("usage/export.csv", api.UsageExportApi.as_view(), name="api-usage-csv"),
    path("dashboard/", api.DashboardApi.as_view(), name="api-dashboard"),
]
