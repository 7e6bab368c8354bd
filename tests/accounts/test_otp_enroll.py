import io
from base64 import b32decode, b32encode
from urllib.parse import parse_qs, urlsplit

import pytest
import segno
from django.core.management import CommandError, call_command
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def enroll(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("otp_enroll", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_creates_one_confirmed_device_and_prints_its_uri_and_qr_code():
    user = UserFactory(email="ops@example.com", is_staff=True)

    out, err = enroll("ops@example.com")

    device = TOTPDevice.objects.get()
    assert (device.user, device.name, device.confirmed) == (user, "authenticator", True)
    secret = b32encode(device.bin_key).decode()
    uri = (
        f"otpauth://totp/TokenByte%3Aops%40example.com?secret={secret}"
        "&algorithm=SHA1&digits=6&period=30&issuer=TokenByte"
    )
    qr = io.StringIO()
    segno.make(uri).terminal(out=qr, compact=True)
    assert out == f"{uri}\n{qr.getvalue()}"
    assert err.splitlines()[0] == "Created TOTP device 'authenticator' for ops@example.com."


def test_the_printed_uri_lets_an_authenticator_app_log_in_to_the_admin(client):
    UserFactory(email="ops@example.com", is_staff=True)
    out, _ = enroll("ops@example.com", "--name", "phone")
    uri = out.splitlines()[0]
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    device = TOTPDevice.objects.get(name="phone")

    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": "ops@example.com",
            "password": "correct horse battery",
            "otp_device": device.persistent_id,
            "otp_token": f"{totp(b32decode(secret)):06d}",
        },
    )

    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_enrolling_again_keeps_one_device_and_shows_the_same_uri():
    UserFactory(email="ops@example.com", is_staff=True)
    first, _ = enroll("ops@example.com")

    second, err = enroll("OPS@example.com")

    assert second == first
    assert TOTPDevice.objects.count() == 1
    assert err.splitlines()[0] == (
        "ops@example.com already has TOTP device 'authenticator'; shown again."
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody@example.com"], "no user with email nobody@example.com"),
        (["customer@example.com"], "customer@example.com is not a staff user"),
        (["ops@example.com", "--name", " "], "--name must be 1 to 64 characters"),
        (["ops@example.com", "--name", "x" * 65], "--name must be 1 to 64 characters"),
        ([], "Error: the following arguments are required: email"),
    ],
)
def test_it_refuses_bad_arguments_and_writes_nothing(args, message):
    UserFactory(email="customer@example.com")
    UserFactory(email="ops@example.com", is_staff=True)
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("otp_enroll", *args, stdout=out, stderr=err)

    assert str(raised.value) == message
    assert (out.getvalue(), err.getvalue()) == ("", "")
    assert not TOTPDevice.objects.exists()


def test_an_unknown_email_exits_1_with_one_line_on_stderr(manage):
    result = manage("otp_enroll", "nobody@example.com")

    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: no user with email nobody@example.com"]
    assert result.stdout == ""
    assert not TOTPDevice.objects.exists()
