"""The consistency history checker on the pgvector index: semantic reads (the index
search in L3, then the entry read by key) are checked like exact ones — a committed
write is found by every process within the bound, an invalidated one never comes back —
with and without PostgreSQL and Redis crashing under the load."""

from __future__ import annotations

import os
import time

import pytest

from tests._history import WorkloadSpec, run_workload
from tests._servers import PostgresServer, PostgresServerUnavailable
from tests.consistency.test_history import _explain, _report, redis_and_postgres_faults

pytestmark = [pytest.mark.pgvector, pytest.mark.postgres]


@pytest.fixture
def own_pgvector():
    """A private PostgreSQL with pgvector (the build the test command found), schema at head."""
    bin_dir = os.environ.get("SEMCACHE_TEST_PGVECTOR_BIN")
    if not bin_dir:
        if os.environ.get("CI"):
            pytest.fail("SEMCACHE_TEST_PGVECTOR_BIN is not set: scripts/test.sh finds the PostgreSQL with pgvector")
        pytest.skip("SEMCACHE_TEST_PGVECTOR_BIN is not set")
    try:
        server = PostgresServer(bin_dir=bin_dir)
    except PostgresServerUnavailable as exc:
        pytest.fail(str(exc)) if os.environ.get("CI") else pytest.skip(str(exc))
    with server:
        from semcache.db import migrate
        from semcache.db.vectors import VECTORS

        migrate.upgrade(server.url)
        from sqlalchemy import create_engine, text

        eng = create_engine(server.url)
        with eng.connect() as conn:
            assert conn.execute(text("SELECT to_regclass(:t)"), {"t": VECTORS}).scalar() is not None
        eng.dispose()
        yield server


def _spec(**kwargs) -> WorkloadSpec:
    defaults = dict(processes=2, threads=2, keys=20, seed=int(time.time()) % 10_000, semantic=True, index="pgvector")
    defaults.update(kwargs)
    return WorkloadSpec(**defaults)


@pytest.mark.xfail(
    strict=False,
    reason="open race: about one run in five finds a read that misses a write its own process made "
    "just before (lost_write, no fault), only with semantic matching on pgvector and no Redis; "
    "not yet diagnosed",
)
def test_semantic_reads_on_pgvector_without_redis(own_pgvector, tmp_path):
    # no Redis: no pub/sub at all; the shared index is all the processes have in common
    spec = _spec(sql_url=own_pgvector.url, duration=8.0, ops_per_thread=6_000)
    result = run_workload(spec, tmp_path)
    report = _report("L1 + L3 (PostgreSQL, pgvector), semantic reads, no faults", result)
    semantic = sum(1 for op in result.history if op.tier and "semantic" in op.tier)
    assert semantic >= 200, semantic
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)


def test_semantic_reads_on_pgvector_and_redis_under_faults(own_pgvector, own_redis, tmp_path, key_prefix):
    injector = redis_and_postgres_faults(own_redis, own_pgvector)
    spec = _spec(sql_url=own_pgvector.url, redis_url=own_redis.url, redis_prefix=key_prefix,
                 duration=12.0, ops_per_thread=15_000)
    result = run_workload(spec, tmp_path, injector=injector)
    report = _report("L1 + L2 + L3 (PostgreSQL, pgvector), semantic reads, faults", result, injector)
    assert set(injector.counts) == {"redis_kill", "postgres_restart", "postgres_kill"}, injector.counts
    semantic = sum(1 for op in result.history if op.tier and "semantic" in op.tier)
    assert semantic >= 100, semantic
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)
