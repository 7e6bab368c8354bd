# The relay's fixtures (its server, role and mock upstream), for the async jobs' tests.
from tests.relay.conftest import (  # noqa: F401
    mock,
    mock_upstream,
    relay,
    relay_role,
    relay_server_sql,
)
