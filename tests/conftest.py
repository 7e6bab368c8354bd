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


@pytest.fixture
def manage(transactional_db):
    """Run `manage.py …` as a real subprocess against the test database."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    root = Path(__file__).resolve().parent.parent

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": url}
        return subprocess.run(
            [sys.executable, str(root / "manage.py"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=root,
        )

    return run
