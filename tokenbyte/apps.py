from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class TokenByteConfig(AppConfig):
    name = "tokenbyte"
    verbose_name = "TokenByte"


class TokenByteAdminConfig(admin_apps.AdminConfig):
    """The staff admin, on a site that requires a verified OTP device."""

    default = False
    default_site = "tokenbyte.admin_site.TokenByteAdminSite"
