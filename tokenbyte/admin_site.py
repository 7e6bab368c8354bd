from django_otp.admin import OTPAdminSite


class TokenByteAdminSite(OTPAdminSite):
    """Staff admin: a password alone is not enough, the login form also asks for a TOTP code."""

    site_header = "TokenByte staff admin"
    site_title = "TokenByte admin"
    index_title = "Platform administration"
