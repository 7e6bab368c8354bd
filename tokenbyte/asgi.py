"""ASGI entry point: /v1 goes to the relay app; the rest to Django (HTTP) and channels (websockets).

Served by daphne in `make run`; any ASGI server works (see the README for production).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbyte.settings")

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.DEBUG:
    # The embedded default serves the console's CSS, JS and vendored files itself; production
    # runs `collectstatic` and lets the proxy in front serve STATIC_ROOT (see the README).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

# Imported after setup: they need the app registry.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from relay.app import application as relay_app  # noqa: E402
from usage.consumers import DashboardConsumer  # noqa: E402

# Websockets authenticate with the console's session; a page of another site may not open them.
websocket_routes = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]

console_app = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_routes))),
    }
)


async def application(scope, receive, send):
    kind = scope["type"]
    is_relay = kind == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/v1")
    if is_relay or kind == "lifespan":
        await relay_app(scope, receive, send)
    else:
        await console_app(scope, receive, send)
