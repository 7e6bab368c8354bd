from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django_otp.admin import OTPAdminSite


class TokenByteAdminSite(OTPAdminSite):
    """Staff admin: a password alone is not enough, the login form also asks for a TOTP code.

    A staff member who signed in to the console with a second factor of allauth.mfa (their
    authenticator app, a recovery code or a passkey) is let in too, so one authenticator entry
    serves both doors; django-otp's device (`otp_enroll`) stays for the admin's own login form.
    """

    site_header = "TokenByte staff admin"
    site_title = "TokenByte admin"
    index_title = "Platform administration"

    def has_permission(self, request: HttpRequest) -> bool:
        if super().has_permission(request):
            return True
        from accounts.selectors import session_passed_mfa

        user = request.user
        return user.is_active and user.is_staff and session_passed_mfa(request=request)


# Django 6 makes https the scheme of a URL typed without one; take it now, and silence the warning.
URL_FIELD_OVERRIDES = {models.URLField: {"assume_scheme": "https"}}


class ViewOnlyAdmin(admin.ModelAdmin):
    """Records only the system writes (ledger, request logs, holds): staff may look, not touch.

    Money and usage history must stay exactly as the relay and the services wrote it, so nobody
    adds, edits or deletes a row here, superusers included.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
