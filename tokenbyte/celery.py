"""The Celery app. Embedded default: tasks run eagerly in-process (no broker)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbyte.settings")

app = Celery("tokenbyte")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
