"""Smoke tests for the test infrastructure itself.

* the shared Redis / PostgreSQL started by ``scripts/test.sh`` are reachable
  through ``SEMCACHE_TEST_REDIS_URL`` / ``SEMCACHE_TEST_PG_URL``;
* ``tests._servers.RedisServer`` can be stopped and restarted mid-test.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

try:
    from tests._servers import RedisServer, RedisServerUnavailable, free_port
except ImportError:  # run without the repo root on sys.path (plain `pytest`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests._servers import RedisServer, RedisServerUnavailable, free_port

REDIS_URL = os.environ.get("SEMCACHE_TEST_REDIS_URL")
PG_URL = os.environ.get("SEMCACHE_TEST_PG_URL")


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason="SEMCACHE_TEST_REDIS_URL not set")
def test_shared_redis_ping_set_get() -> None:
    redis = pytest.importorskip("redis")
    assert REDIS_URL is not None
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        assert client.ping() is True
        key = f"semcache:smoke:{uuid.uuid4().hex}"
        assert client.set(key, b"hello", ex=60)
        assert client.get(key) == b"hello"
        assert client.delete(key) == 1
        assert client.get(key) is None
    finally:
        client.close()


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="SEMCACHE_TEST_PG_URL not set")
def test_shared_postgres_select_1() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    assert PG_URL is not None
    engine = sqlalchemy.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar_one() == 1
            assert conn.execute(sqlalchemy.text("select current_database()")).scalar_one()
    finally:
        engine.dispose()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.redis
def test_private_redis_server_stop_and_restart() -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        server = RedisServer()
    except RedisServerUnavailable as e:
        pytest.skip(str(e))

    with server:
        url = server.url
        assert url.startswith("redis://127.0.0.1:")
        # No retries, short timeouts: an outage must surface immediately.
        client = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        try:
            assert client.ping() is True
            client.set("k", b"v")
            assert client.get("k") == b"v"

            server.stop()
            assert not server.running
            with pytest.raises(redis.exceptions.ConnectionError):
                client.ping()

            server.start()
            assert server.running
            assert server.url == url  # same port again
            assert client.ping() is True  # the client reconnects by itself
            assert client.get("k") is None  # no persistence: fresh dataset
            client.set("k", b"v2")
            assert client.get("k") == b"v2"
        finally:
            client.close()
    assert not server.running
