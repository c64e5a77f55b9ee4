"""The consistency history checker on the pgvector index: semantic reads (the index
search in L3, then the entry read by key) are checked like exact ones — a committed
write is found by every process within the bound, an invalidated one never comes back —
with and without PostgreSQL and Redis crashing under the load. The workload's scope (20
keys) is one the search handles exactly, whatever the planner knows of the churned table;
the last test pins that down on its own (the HNSW scan it used to take could end without
reaching a row committed just before)."""

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



def test_a_small_scope_is_searched_exactly_whatever_the_planner_knows(own_pgvector):
    """The history's lost writes, without their luck: on a table the planner has no
    statistics for (new, or churned faster than autovacuum analyzes it) it takes the HNSW
    scan for a handful of rows, and under update/delete churn that scan can end without
    reaching a committed row (a semantic read then missed the write its own thread had
    just made). A scope that small is searched exactly: the HNSW scan never runs for it,
    and every key set is found by its semantic read, after any churn."""
    import random

    from sqlalchemy import create_engine, text

    from semcache import CacheConfig, Policy, SemanticCache, SQLConfig
    from semcache.db.vectors import VECTORS, hnsw_index_name
    from tests._history import DistinctEmbedder

    eng = create_engine(own_pgvector.url)
    with eng.begin() as conn:
        # no autovacuum (nor its analyze) on the table while the test runs: the planner
        # knows what a fresh table tells it, whatever the timing
        conn.execute(text(f"ALTER TABLE {VECTORS} SET (autovacuum_enabled = false)"))
    config = CacheConfig(
        memory=None, sql=SQLConfig(url=own_pgvector.url), embedder=DistinctEmbedder(), index="pgvector",
        policy=Policy(similarity_threshold=0.95, verifier=None, sweep_interval_seconds=None),
    )
    prompts = [f"consistency question number {i}: what is {i} squared?" for i in range(20)]
    with SemanticCache(config) as cache:
        store = cache.tiers[-1]
        emb = cache.embedder
        rng = random.Random(5)
        # churn as the history makes it: sets, invalidations, deletes, now and then a flush;
        # every set read back at once by the semantic path alone
        for n in range(600):
            p = rng.choice(prompts)
            r = rng.random()
            if r < 0.55:
                cache.set(p, f"v{n}")
                hit = cache.lookup(cache.request(p), exact=False)
                assert hit is not None and hit.value == f"v{n}", (n, p)
            elif r < 0.97:
                cache.invalidate(key=cache.request(p).key)
            else:
                cache.flush()
        for p in prompts:
            cache.set(p, "last")
        scope = cache.request(prompts[0]).scope
        q = "[" + ",".join(map(repr, emb.embed([prompts[0]])[0].tolist())) + "]"
        params = {"q": q, "m": emb.model_id, "s": scope, "k": 4, "exact": getattr(cache.index, "exact_below", 1000)}
        dist = "(embedding::vector(32) <#> CAST(:q AS vector(32)))"
        with eng.begin() as conn:
            conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            # the planner, left to itself on this table, takes the HNSW scan for 20 rows...
            plain = "\n".join(
                r[0]
                for r in conn.execute(
                    text(
                        f"EXPLAIN SELECT key FROM {VECTORS} WHERE dim = 32 AND embedder_id = :m AND scope = :s "
                        f"ORDER BY {dist} LIMIT :k"
                    ),
                    params,
                )
            )
            assert hnsw_index_name(32) in plain, plain
            # ...and the search never runs it for them
            plan = [r[0] for r in conn.execute(text("EXPLAIN (ANALYZE, COSTS OFF) " + store._search_stmt(32).text), params)]
            hnsw = [line for line in plan if hnsw_index_name(32) in line]
            assert all("never executed" in line for line in hnsw), "\n".join(plan)
        found = store.vector_search(scope, emb.model_id, emb.embed([prompts[0]])[0], 4, ef_search=96, max_scan_tuples=20_000)
        assert found[0][0] == cache.request(prompts[0]).key and len(found) == 4, found
    eng.dispose()
