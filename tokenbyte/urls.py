from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.urls import api_urlpatterns as accounts_api
from billing.urls import api_urlpatterns as billing_api
from billing.webhooks import stripe_webhook
from catalog.urls import api_urlpatterns as catalog_api
from tasks.urls import api_urlpatterns as tasks_api
from tokenbyte.views import home
from usage.urls import api_urlpatterns as usage_api

api_urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    *accounts_api,
    *catalog_api,
    *usage_api,
    *billing_api,
    *tasks_api,
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/", include(api_urlpatterns)),
    path("billing/stripe/webhook/", stripe_webhook, name="stripe_webhook"),
    path("", home, name="home"),
    path("", include("usage.urls")),
    path("", include("accounts.urls")),
    path("organization/", include("accounts.org_urls")),
    path("", include("catalog.urls")),
    path("", include("tasks.urls")),
    path("", include("billing.urls")),
]
