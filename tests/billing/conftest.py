import pytest
from django.db import connection


@pytest.fixture
def ledger_fails_once(transactional_db):
    """The database refuses the next ledger insert once (a fault injected in PostgreSQL: the
    sequence is not transactional, so the rollback does not re-arm it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE SEQUENCE test_fault_seq;
            CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('test_fault_seq') = 1 THEN
                    RAISE EXCEPTION 'injected fault';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_fault BEFORE INSERT ON billing_ledgerentry
                FOR EACH ROW EXECUTE FUNCTION test_fault();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER test_fault ON billing_ledgerentry; DROP FUNCTION test_fault();"
            "DROP SEQUENCE test_fault_seq;"
        )
