from django.urls import path

from billing import views

urlpatterns = [
    path("wallet/", views.wallet, name="wallet"),
]
