import pytest
from django.core.cache import cache
from django.db import connection


@pytest.mark.django_db
def test_the_suite_runs_on_postgresql():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("select version()")
        assert cursor.fetchone()[0].startswith("PostgreSQL")


def test_redis_answers():
    from django.conf import settings
    from redis import Redis

    assert Redis.from_url(settings.REDIS_URL).ping() is True
    cache.set("stack-check", "ok", 5)
    assert cache.get("stack-check") == "ok"
