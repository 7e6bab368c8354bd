"""What the browser tests share: screenshots, a virtual passkey authenticator, TOTP codes."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

from django_otp.oath import hotp

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".tmp" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# The password of every user that tests.factories.UserFactory makes.
PASSWORD = "correct horse battery"


def shoot(page, name: str) -> list[Path]:
    """Save the current page light and dark, desktop and phone, as NAME-SCHEME-WIDTH.png."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"screenshot name must be lowercase letters, digits and dashes: {name!r}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    saved = []
    try:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            for width_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
                page.set_viewport_size(size)
                path = SCREENSHOTS / f"{name}-{scheme}-{width_name}.png"
                page.screenshot(path=str(path), full_page=True, animations="disabled")
                saved.append(path)
    finally:
        page.emulate_media(color_scheme="light")
        page.set_viewport_size(viewport)
    return saved


def add_virtual_authenticator(page) -> tuple[object, str]:
    """A platform passkey authenticator (Chromium's virtual one, through CDP) for PAGE's tab.

    It must exist before the page calls WebAuthn; it lives as long as the tab, so a test signs
    out and back in with the same page. Returns the CDP session and the authenticator's id.
    """
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


def totp_code(secret: str, *, at: float | None = None) -> str:
    """The code an authenticator app shows for SECRET (base32, as the page shows it)."""
    key = base64.b32decode(secret.replace(" ", "").upper() + "=" * (-len(secret) % 8))
    return f"{hotp(key, int(time.time() if at is None else at) // 30, digits=6):06d}"
