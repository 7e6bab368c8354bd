import io

import segno
from django.conf import settings

from accounts.models import ApiToken, Organization
from accounts.services import (
    api_token_create,
    api_token_set_status,
    organization_create,
    staff_totp_device_get_or_create,
    user_get_or_create,
    user_set_random_password,
)
from billing.services import credit_grant, wallet_get_or_create
from catalog.models import Channel
from catalog.selectors import default_catalog
from catalog.services import catalog_import, channel_create, channel_models_add
from tokenbyte.commands import OperatorCommand
from tokenbyte.money import format_usd

DEMO_EMAIL = "demo@example.com"
DEMO_CREDIT_MICROS = 10_000_000
DEMO_KEY_NAME = "demo"
DEMO_CHANNEL_NAME = "Demo mock upstream"
DEMO_ORG_NAME = "Demo Team"
DEMO_MODELS = {
    "models": [
        {
            "id": "demo-chat",
            "provider": "tokenbyte",
            "display_name": "Demo Chat (mock upstream)",
            "description": "Answers from the bundled mock upstream; free of any real provider.",
            "context_length": 128000,
            "max_output_tokens": 4096,
            "call_type": "chat",
            "input_per_mtok": "0.50",
            "output_per_mtok": "1.50",
            "cached_input_per_mtok": "0.25",
            "capabilities": ["streaming", "tools", "json", "vision"],
            "sort_order": -20,
        },
        {
            "id": "demo-embedding",
            "provider": "tokenbyte",
            "display_name": "Demo Embedding (mock upstream)",
            "context_length": 8191,
            "call_type": "embedding",
            "input_per_mtok": "0.02",
            "output_per_mtok": "0",
            "sort_order": -10,
        },
        {
            "id": "demo-image",
            "provider": "tokenbyte",
            "display_name": "Demo Image (mock upstream)",
            "description": "A small PNG from the mock upstream, per image.",
            "call_type": "image",
            "price_unit": "image",
            "unit_price": "0.04",
            "unit_price_variants": {"1024x1024/hd": "0.08", "1792x1024": "0.08"},
            "sort_order": -9,
        },
        {
            "id": "demo-tts",
            "provider": "tokenbyte",
            "display_name": "Demo Speech (mock upstream)",
            "description": "A short WAV from the mock upstream, per 1M characters.",
            "call_type": "audio",
            "price_unit": "mchar",
            "unit_price": "15.00",
            "sort_order": -8,
        },
        {
            "id": "demo-whisper",
            "provider": "tokenbyte",
            "display_name": "Demo Transcription (mock upstream)",
            "description": "A fixed transcript from the mock upstream, per second of audio.",
            "call_type": "audio",
            "price_unit": "second",
            "unit_price": "0.0001",
            "sort_order": -7,
        },
        {
            "id": "demo-moderation",
            "provider": "tokenbyte",
            "display_name": "Demo Moderation (mock upstream)",
            "call_type": "embedding",
            "price_unit": "request",
            "unit_price": "0.0001",
            "capabilities": ["moderation"],
            "sort_order": -6,
        },
    ]
}


class Command(OperatorCommand):
    help = (
        "Seed the offline demo: the default catalog, a mock channel, demo@example.com with $10 "
        "and a demo key. Safe to run again: it issues a fresh password and key each time."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="for the printed URLs")
        parser.add_argument("--port", type=int, default=8000, help="for the printed URLs")

    def handle(self, *args, host: str, port: int, **options):
        # Existing models keep their (possibly edited) prices; only missing ones are added.
        catalog_import(data=default_catalog(), update_existing=False)
        catalog_import(data=DEMO_MODELS, update_existing=False)
        demo_ids = [m["id"] for m in DEMO_MODELS["models"]]
        channel = Channel.objects.filter(name=DEMO_CHANNEL_NAME).first()
        if channel is None:
            channel_create(
                name=DEMO_CHANNEL_NAME,
                type=Channel.Type.MOCK,
                base_url=settings.MOCK_UPSTREAM_URL,
                model_ids=demo_ids,
                api_key="mock-upstream-key",
            )
        else:
            # A demo seeded by an older version: the channel serves the demo models added since.
            channel_models_add(channel=channel, model_ids=demo_ids)

        user, _ = user_get_or_create(email=DEMO_EMAIL)
        # The demo account is also the local operator, so it can open the staff admin.
        if not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        password = user_set_random_password(user=user)
        device, _ = staff_totp_device_get_or_create(user=user, name="demo")

        wallet = wallet_get_or_create(user=user)
        credit_grant(
            wallet=wallet,
            amount_micros=DEMO_CREDIT_MICROS,
            reason="Demo credit",
            idempotency_key="seed_demo:credit",
        )
        wallet.refresh_from_db()

        # An organization to try the team features with: its own wallet, the demo user owner.
        org = Organization.objects.filter(created_by=user, name=DEMO_ORG_NAME).first()
        if org is None:
            org = organization_create(user=user, name=DEMO_ORG_NAME)
        credit_grant(
            wallet=wallet_get_or_create(organization=org),
            amount_micros=DEMO_CREDIT_MICROS,
            reason="Demo credit",
            idempotency_key="seed_demo:org-credit",
        )

        # A key cannot be shown twice, so each run revokes the previous demo key and issues one.
        for old in ApiToken.objects.filter(owner=user, name=DEMO_KEY_NAME).exclude(
            status=ApiToken.Status.REVOKED
        ):
            api_token_set_status(token=old, status=ApiToken.Status.REVOKED)
        _, key = api_token_create(owner=user, name=DEMO_KEY_NAME)

        base = f"http://{host}:{port}"
        uri = device.config_url
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "TokenByte demo is ready.",
                    f"  Relay base URL: {base}/v1",
                    f"  Login:          {DEMO_EMAIL}  password: {password}",
                    f"  Demo API key:   {key}",
                    f"  Balance:        {format_usd(wallet.balance_micros)}",
                    f"  Organization:   {org.name} (switch to it in the console's header)",
                    f"  Staff admin:    {base}/admin/  (same login, plus a code from this",
                    "                  authenticator entry; scan the QR code or add the URI)",
                    f"  TOTP URI:       {uri}",
                    "",
                ]
            )
        )
        qr = io.StringIO()
        segno.make(uri).terminal(out=qr, compact=True)
        self.stdout.write(qr.getvalue(), ending="")
        self.stdout.write("The password and key above are shown once; run again for new ones.")
