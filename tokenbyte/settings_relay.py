"""Settings of a relay-only process (`relay.asgi`): the production ones, minus the console.

A process that serves only /v1 needs the models and services, not the admin, allauth, DRF or
channels; leaving them out saves memory and start-up time in every relay process.
"""

from tokenbyte.settings import *  # noqa: F403

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "tokenbyte",
    "accounts",
    "catalog",
    "billing",
    "usage",
    "relay",
    "tasks",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "relay.urls"
