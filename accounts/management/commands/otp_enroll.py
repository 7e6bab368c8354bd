import io

import segno
from django.core.management.base import CommandError

from accounts.models import User
from accounts.services import staff_totp_device_get_or_create
from tokenbyte.commands import OperatorCommand

# django_otp's Device.name is a CharField(max_length=64).
DEVICE_NAME_MAX_LENGTH = 64


class Command(OperatorCommand):
    help = (
        "Give a staff user a confirmed TOTP device for the admin: prints its otpauth:// URI and a "
        "QR code to scan with an authenticator app."
    )

    def add_arguments(self, parser):
        parser.add_argument("email", help="email of an existing staff user")
        parser.add_argument("--name", default="authenticator", help="device name")

    def handle(self, *args, **options):
        name = options["name"].strip()
        if not name or len(name) > DEVICE_NAME_MAX_LENGTH:
            raise CommandError(f"--name must be 1 to {DEVICE_NAME_MAX_LENGTH} characters")
        email = options["email"].strip()
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"no user with email {email}")
        device, created = staff_totp_device_get_or_create(user=user, name=name)
        # config_url takes the issuer from settings.OTP_TOTP_ISSUER.
        uri = device.config_url
        qr = io.StringIO()
        # Buffered: OutputWrapper.write would end every fragment segno writes with a newline.
        segno.make(uri).terminal(out=qr, compact=True)
        if created:
            self.stderr.write(f"Created TOTP device {device.name!r} for {user.email}.")
        else:
            self.stderr.write(f"{user.email} already has TOTP device {device.name!r}; shown again.")
        self.stderr.write(
            "Scan the QR code or enter the URI in an authenticator app; "
            "the admin login asks for its 6-digit code."
        )
        self.stdout.write(uri)
        self.stdout.write(qr.getvalue(), ending="")
