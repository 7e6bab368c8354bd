from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"

    def ready(self) -> None:
        # Services queue tasks by name, after the commit. A worker imports this module at start,
        # but a web or relay process would not: the name would then go to the broker unknown,
        # and with the embedded default's eager mode (no broker server) it would never run.
        from tasks import tasks  # noqa: F401
