import pytest
from allauth.core.context import request_context
from django.test import override_settings

from accounts.adapters import MFAAdapter


@pytest.mark.parametrize(
    ("rp_id", "host", "expected"),
    [
        ("", "localhost:8000", "localhost"),
        ("console.example.com", "10.0.0.5:8000", "console.example.com"),
    ],
)
def test_the_passkey_domain_is_the_setting_or_else_the_requests_host(rf, rp_id, host, expected):
    request = rf.get("/", HTTP_HOST=host)

    with override_settings(WEBAUTHN_RP_ID=rp_id, ALLOWED_HOSTS=["*"]), request_context(request):
        entity = MFAAdapter().get_public_key_credential_rp_entity()

    assert entity == {"id": expected, "name": "TokenByte"}
