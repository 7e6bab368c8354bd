import pytest
from django.conf import settings


def pytest_configure(config):
    # The suite runs on the production stack; `make test` provides both servers.
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise pytest.UsageError(
            "Tests need PostgreSQL: run them with `make test` (or set DATABASE_URL and REDIS_URL)."
        )
    if not settings.REDIS_URL:
        raise pytest.UsageError("Tests need Redis: run them with `make test` (or set REDIS_URL).")


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield
