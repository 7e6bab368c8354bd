from django.urls import path

from billing import views

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = []
