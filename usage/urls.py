from django.urls import path

from usage import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("logs/", views.log_list, name="logs"),
    path("logs/<str:request_id>/", views.log_detail, name="log_detail"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = []
