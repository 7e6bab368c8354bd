"""The Celery app. Embedded default: tasks run eagerly in-process (no broker)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbyte.settings")

app = Celery("tokenbyte")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def task_queue(name: str, *args: object):
    """Queue a task by its name: services never import task modules (those import services).
    The task modules are loaded first, so the name is known in any process: a web or relay
    process loads Celery only when it first queues something, and in eager mode (no broker) a
    name Celery does not know would never run."""
    app.loader.import_default_modules()
    return app.signature(name, args=args).delay()
