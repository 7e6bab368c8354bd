"""ASGI entry point of a relay-only process: /v1 and nothing else.

    uvicorn relay.asgi:application --loop uvloop --http relay.server:RelayHttpProtocol \\
        --timeout-keep-alive 5 --no-access-log

Behind a load balancer that sends /v1 here and everything else to `tokenbyte.asgi`. A process of
`tokenbyte.asgi` serves /v1 the same way; this one is leaner (see tokenbyte/settings_relay.py).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbyte.settings_relay")
django.setup()

from relay.app import application  # noqa: E402  (needs the app registry)

__all__ = ["application"]
