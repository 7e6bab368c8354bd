from django.contrib import admin
from django.urls import include, path

from tokenbyte.views import home

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("", home, name="home"),
    path("", include("usage.urls")),
    path("", include("accounts.urls")),
    path("", include("catalog.urls")),
    path("", include("tasks.urls")),
    path("", include("billing.urls")),
]
