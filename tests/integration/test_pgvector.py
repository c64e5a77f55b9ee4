"""The shared vector index in a real PostgreSQL with pgvector: the schema from the
Alembic revision, vectors written and removed in the entry's transaction, the scope and
the embedder as hard filters inside the HNSW search, replicas that see each other's
entries at commit with no pub/sub and no rebuild, and the choice of backend."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.config import IndexConfig
from semcache.db import migrate
from semcache.db.vectors import VECTORS, hnsw_index_name
from semcache.embedders import HashingEmbedder
from semcache.errors import ConfigurationError
from semcache.index.faiss import FaissIndex
from semcache.index.pgvector import PgVectorIndex
from semcache.tiers import sql_vectors

pytestmark = pytest.mark.pgvector


class FixedEmbedder:
    """Maps known prompts to given unit vectors (anything else: a hash of the text)."""

    def __init__(self, table: dict[str, np.ndarray], dim: int = 8, model_id: str = "fixed-8") -> None:
        self.dim, self.model_id, self.max_tokens = dim, model_id, 512
        self._table = {k: (v / np.linalg.norm(v)).astype(np.float32) for k, v in table.items()}
        self._fallback = HashingEmbedder(dim)

    def embed(self, texts):
        out = np.stack([self._table[t] if t in self._table else self._fallback.embed([t])[0] for t in texts])
        return out.astype(np.float32)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _cache(url, *, embedder=None, index="auto", memory=True, threshold=0.8, clock=None):
    cfg = CacheConfig(
        memory=MemoryConfig() if memory else None,
        sql=SQLConfig(url=url),
        index=index,
        embedder=embedder if embedder is not None else HashingEmbedder(64),
        policy=Policy(similarity_threshold=threshold, verifier=None, sweep_interval_seconds=None),
    )
    return SemanticCache(cfg, timer=clock) if clock is not None else SemanticCache(cfg)


def _vector_keys(url) -> set[str]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return {r[0] for r in conn.execute(text(f"SELECT key FROM {VECTORS}"))}
    finally:
        eng.dispose()


# -- the schema --------------------------------------------------------------------------
def test_revision_creates_the_vector_table_and_hnsw_index_with_no_drift(pgvector_schema_url):
    from alembic import command

    assert migrate.upgrade(pgvector_schema_url) == migrate.head_revision() == "0004_pgvector"
    command.check(migrate.alembic_config(pgvector_schema_url))  # the ORM and the revisions agree
    eng = create_engine(pgvector_schema_url)
    with eng.connect() as conn:
        idx = {r[0]: r[1] for r in conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"), {"t": VECTORS})}
    eng.dispose()
    assert "USING hnsw" in idx[hnsw_index_name(384)] and "vector_ip_ops" in idx[hnsw_index_name(384)]
    assert "WHERE (dim = 384)" in idx[hnsw_index_name(384)]


def test_without_pgvector_the_revision_skips_it_auto_takes_faiss_and_pgvector_says_what_to_run(pg_schema_url):
    # Debian's PostgreSQL here has no pgvector
    assert migrate.upgrade(pg_schema_url) == migrate.head_revision()
    with _cache(pg_schema_url) as c:
        assert isinstance(c.index, FaissIndex)
    with pytest.raises(ConfigurationError) as err:
        _cache(pg_schema_url, index="pgvector").open()
    assert "CREATE EXTENSION vector" in str(err.value) and "semcache db upgrade" in str(err.value)


def test_pgvector_on_sqlite_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        _cache(f"sqlite:///{tmp_path}/c.db", index="pgvector").open()
    with _cache(f"sqlite:///{tmp_path}/c.db") as c:  # auto: the embedded default keeps FAISS
        assert isinstance(c.index, FaissIndex)


def test_a_new_dimension_gets_its_own_hnsw_index(pgvector_schema_url):
    with _cache(pgvector_schema_url, embedder=HashingEmbedder(64)) as c:
        assert isinstance(c.index, PgVectorIndex)
    eng = create_engine(pgvector_schema_url)
    with eng.connect() as conn:
        names = {r[0] for r in conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": VECTORS})}
    eng.dispose()
    assert {hnsw_index_name(64), hnsw_index_name(384)} <= names


# -- writes and removes in the entry's transaction ---------------------------------------
def test_vectors_follow_writes_invalidations_flushes_and_sweeps(pgvector_schema_url, clock):
    with _cache(pgvector_schema_url, clock=clock) as c:
        assert c.stats()["index"]["backend"] == "pgvector"
        a = c.set("how do I sort a list", "sorted()", tags=("py",))
        b = c.set("how do I reverse a list", "reversed()", ttl_seconds=60)
        c.set("an exact only entry", "x")
        keys = _vector_keys(pgvector_schema_url)
        assert {a.key, b.key} <= keys
        c.invalidate(tag="py")
        assert a.key not in _vector_keys(pgvector_schema_url)
        clock.advance(120)
        assert c.sweep() >= 1
        assert b.key not in _vector_keys(pgvector_schema_url)
        c.set("another question", "y")
        c.flush()
        assert _vector_keys(pgvector_schema_url) == set()


def test_a_semantic_hit_comes_from_the_l3_index(pgvector_schema_url):
    with _cache(pgvector_schema_url, memory=False) as c:
        c.set("how do I sort a list in python", "sorted()")
        hit = c.get("how do i sort a list in python please")
        assert hit is not None and hit.kind == "semantic" and hit.value == "sorted()"
        assert c.get("what is the capital of france") is None


# -- hard filters ---------------------------------------------------------------------------
def test_the_scope_is_a_hard_filter_inside_the_hnsw_scan(pgvector_schema_url):
    rng = np.random.default_rng(7)
    q = rng.normal(size=8)
    # 3,000 entries of namespace "a" right next to the query; one entry of "b", further off
    near = {f"a question {i}": q + rng.normal(scale=0.01, size=8) for i in range(3000)}
    far = q + rng.normal(scale=0.25, size=8)
    emb = FixedEmbedder({**near, "the b question": far, "the probe": q})
    with _cache(pgvector_schema_url, embedder=emb, memory=False, threshold=0.5) as c:
        c.set_many([{"prompt": p, "value": "a", "namespace": "a"} for p in near])
        c.set("the b question", "b", namespace="b")
        eng = create_engine(pgvector_schema_url)
        with eng.connect() as conn:
            conn.execute(text(f"ANALYZE {VECTORS}"))
        eng.dispose()
        hit = c.get("the probe", namespace="b")
        assert hit is not None and hit.value == "b"  # never one of the 3,000 nearer "a" entries
        assert c.get("the probe", namespace="a").value == "a"
        assert c.get("the probe", namespace="c") is None


def test_the_search_of_a_large_scope_uses_the_hnsw_index(pgvector_schema_url):
    rng = np.random.default_rng(3)
    vecs = {f"q{i}": rng.normal(size=8) for i in range(3000)}
    with _cache(pgvector_schema_url, embedder=FixedEmbedder(vecs), memory=False) as c:
        c.set_many([{"prompt": p, "value": p} for p in vecs])
        scope = c.request("q0").scope
    eng = create_engine(pgvector_schema_url)
    with eng.begin() as conn:
        conn.execute(text(f"ANALYZE {VECTORS}"))
        conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                text(
                    f"EXPLAIN SELECT key FROM {VECTORS} WHERE dim = 8 AND embedder_id = 'fixed-8' AND scope = :s "
                    "ORDER BY embedding::vector(8) <#> CAST(:q AS vector(8)) LIMIT 4"
                ),
                {"s": scope, "q": "[" + ",".join(["0.1"] * 8) + "]"},
            )
        )
    eng.dispose()
    assert hnsw_index_name(8) in plan, plan

    # semcache's own statement with its own settings: the HNSW branch runs, the exact one
    # does not, and no parallel worker is started for it (the session is set up to make a
    # parallel plan as cheap as can be, so only the search's own setting keeps them out)
    eng = create_engine(pgvector_schema_url)
    with eng.begin() as conn:
        conn.execute(text("SET LOCAL parallel_setup_cost = 0"))
        conn.execute(text("SET LOCAL parallel_tuple_cost = 0"))
        conn.execute(text("SET LOCAL min_parallel_table_scan_size = 0"))
        conn.execute(sql_vectors._SETTINGS, {"ef": "96", "mst": "20000"})
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                text("EXPLAIN (ANALYZE, COSTS OFF) " + sql_vectors.search_sql(8)),
                {"s": scope, "m": "fixed-8", "k": 4, "exact": sql_vectors.EXACT_BELOW, "q": "[" + ",".join(["0.1"] * 8) + "]"},
            )
        )
    eng.dispose()
    assert hnsw_index_name(8) in plan and "Workers" not in plan and "Gather" not in plan, plan


def test_the_embedder_is_a_hard_filter(pgvector_schema_url):
    v = np.ones(8)
    with _cache(pgvector_schema_url, embedder=FixedEmbedder({"same text": v}, model_id="model-one")) as one:
        one.set("same text", "from one")
    other = FixedEmbedder({"same text": v, "same text?": v}, model_id="model-two")
    with _cache(pgvector_schema_url, embedder=other, memory=False) as two:
        # the same vector under another embedder id is never compared
        assert two.lookup(two.request("same text?"), exact=False) is None
        assert two.check_index()["l3_embedded"] == 0


# -- replicas -------------------------------------------------------------------------------
def test_replicas_see_each_others_entries_at_commit_without_pubsub_or_rebuild(pgvector_schema_url, monkeypatch):
    a = _cache(pgvector_schema_url).open()
    b = _cache(pgvector_schema_url).open()
    try:
        a.set("how do I sort a list in python", "sorted()")
        # no Redis anywhere: nothing was published; B finds it in L3's index at once
        hit = b.get("how do i sort a list in python please")
        assert hit is not None and hit.value == "sorted()" and hit.kind == "semantic"
        # a third replica opened later: no rebuild, and it serves the entry at once
        from semcache.reindex import Reindexer

        def no_rebuild(self, *args, **kwargs):
            raise AssertionError("a pgvector replica must not rebuild its index")

        monkeypatch.setattr(Reindexer, "_rebuild", no_rebuild)
        with _cache(pgvector_schema_url) as c:
            hit = c.get("how do i sort a list in python please")
            assert hit is not None and hit.value == "sorted()"
            assert c.check_index()["consistent"] is True
        # an invalidation through B is gone from A's semantic path at commit too
        b.invalidate(key=a.request("how do I sort a list in python").key)
        assert a.lookup(a.request("how do i sort a list in python please"), exact=False) is None
    finally:
        a.close()
        b.close()


def test_l3_down_makes_semantic_lookups_miss_not_fail(pgvector_schema_url):
    with _cache(pgvector_schema_url) as c:
        c.set("how do I sort a list in python", "sorted()")
        store = c.tiers[-1]
        store.engine.dispose()
        real = store.vector_search

        def down(*args, **kwargs):
            from semcache.errors import BackendUnavailable

            raise BackendUnavailable("L3 is down")

        store.vector_search = down
        try:
            assert c.lookup(c.request("how do i sort a list in python please"), exact=False) is None
            assert c.index.stats()["search_errors"] == 1
            assert c.get("how do I sort a list in python").value == "sorted()"  # exact, from L1
        finally:
            store.vector_search = real


def test_index_config_object_and_env_select_the_backend(pgvector_schema_url):
    cfg = CacheConfig.from_env(environ={"SEMCACHE_SQL_URL": pgvector_schema_url, "SEMCACHE_INDEX": "faiss", "SEMCACHE_EMBEDDER": "none"})
    assert cfg.index.backend == "faiss"
    with _cache(pgvector_schema_url, index=IndexConfig(backend="faiss")) as c:
        assert isinstance(c.index, FaissIndex)
    with pytest.raises(ConfigurationError):
        IndexConfig(backend="annoy")  # type: ignore[arg-type]


def test_db_upgrade_says_which_vector_index_the_database_gives(pgvector_schema_url, pg_schema_url):
    from click.testing import CliRunner

    from semcache.cli.main import cli

    out = CliRunner().invoke(cli, ["db", "upgrade", "--url", pgvector_schema_url])
    assert out.exit_code == 0, out.output
    assert "vector index: pgvector" in out.output
    out = CliRunner().invoke(cli, ["db", "upgrade", "--url", pg_schema_url, "--json"])
    assert out.exit_code == 0, out.output
    assert '"vector_index": "missing"' in out.output


def test_a_small_scope_in_a_large_table_is_found_on_every_repeat(pgvector_schema_url):
    # three far-off entries of one scope among 3,000 of another, searched again and again
    # (past the point where the statement is prepared server-side), with a scan budget
    # far smaller than the other scope: each search must still find all three
    rng = np.random.default_rng(11)
    big = {f"big {i}": rng.normal(size=8) + 4.0 for i in range(3000)}
    small = {f"small {i}": -rng.normal(size=8) - 4.0 for i in range(3)}
    emb = FixedEmbedder({**big, **small})
    with _cache(pgvector_schema_url, embedder=emb, memory=False) as c:
        c.set_many([{"prompt": p, "value": "big", "namespace": "big"} for p in big])
        c.set_many([{"prompt": p, "value": "small", "namespace": "small"} for p in small])
        store = c.tiers[-1]
        with store.engine.connect() as conn:
            conn.execute(text(f"ANALYZE {VECTORS}"))
        scope = c.request("x", namespace="small").scope
        q = emb.embed(["small 0"])[0]
        for _ in range(12):  # past psycopg's prepare threshold and PostgreSQL's five custom plans
            found = store.vector_search(scope, "fixed-8", q, 3, ef_search=10, max_scan_tuples=50)
            assert len(found) == 3 and found[0][1] == pytest.approx(1.0, abs=1e-5), found
