"""Fixtures for the consistency runs: private servers this suite may crash and restart
(never the shared ones from SEMCACHE_TEST_*), and a schema made before the worker
processes race to open it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests._servers import PostgresServer, PostgresServerUnavailable, RedisServer, RedisServerUnavailable


def _unavailable(reason: str) -> None:
    # in CI both servers are installed by scripts/setup.sh: their absence is a failure
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port (emptied by every restart)."""
    try:
        server = RedisServer()
    except RedisServerUnavailable as exc:
        _unavailable(str(exc))
    with server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster with the semcache schema at head."""
    try:
        server = PostgresServer()
    except PostgresServerUnavailable as exc:
        _unavailable(str(exc))
    with server:
        from semcache.db.migrate import upgrade

        upgrade(server.url)
        yield server


@pytest.fixture
def shared_sqlite_url(tmp_path) -> str:
    """One SQLite file for every worker process, schema at head."""
    from semcache.db.migrate import upgrade

    url = f"sqlite:///{tmp_path}/shared.db"
    upgrade(url)
    return url
