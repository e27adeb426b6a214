import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import GunicornServer, RedisServer  # noqa: E402


@pytest.fixture(scope="module")
def server(request):
    """A gevent gunicorn serving tests/apps/core_app.py; a module may set SETTINGS."""
    settings = getattr(request.module, "SETTINGS", {})
    srv = GunicornServer(settings=settings).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server():
    """Start extra servers inside a test; all stopped at its end."""
    started = []

    def make(**kwargs):
        srv = GunicornServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.stop()
