"""Per-namespace (tenant) counters: bounded memory, a stable order, and the library's
``namespace_stats`` agreeing with what the cache did in each namespace."""

from __future__ import annotations

import threading

import pytest

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.embedders import HashingEmbedder
from semcache.errors import ConfigurationError
from semcache.server.config import ServerConfig
from semcache.stats import OTHER_NAMESPACES, NamespaceCounters, namespace_rows


def test_namespaces_past_the_limit_share_one_row_and_are_reported_untracked():
    c = NamespaceCounters(limit=3)
    c.register(["b"])  # registered first: first in order
    for ns in ("a", None, "c", "d", "e"):
        c.inc(ns, "misses")
    c.inc("d", "sets", 5)
    assert len(c) == 3
    rows, other = c.snapshot()
    assert [ns for ns, _ in rows] == ["b", "a", None]
    assert other == {"misses": 3, "sets": 5}
    assert c.get("a") == (True, {"misses": 1}) and c.get("d") == (False, {})
    kept, rest = namespace_rows(c, 2)
    assert [r["namespace"] for r in kept] == ["b", "a"]
    # the third tracked namespace and the untracked ones add up in the rest
    assert rest["namespace"] == OTHER_NAMESPACES and rest["misses"] == 4 and rest["sets"] == 5


def test_concurrent_increments_are_all_counted():
    c = NamespaceCounters(limit=100)
    start = threading.Barrier(4)

    def work(ns: str) -> None:
        start.wait()
        for _ in range(2000):
            c.inc(ns, "misses")
            c.inc("shared", "sets")

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get("shared") == (True, {"sets": 8000})
    assert all(c.get(f"t{i}") == (True, {"misses": 2000}) for i in range(4))


@pytest.fixture
def cache(tmp_path):
    cfg = CacheConfig(
        memory=MemoryConfig(),
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"),
        embedder=HashingEmbedder(64),
        policy=Policy(similarity_threshold=0.8, verifier=None),
    )
    with SemanticCache(cfg) as c:
        yield c


def test_namespace_stats_follow_hits_misses_sets_and_savings(cache):
    usage = {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}
    cache.set("What is the capital of France?", "Paris", namespace="acme", metadata={"usage": usage, "cost": 0.002})
    cache.set("Who wrote Hamlet?", "Shakespeare", namespace="globex")
    assert cache.get("What is the capital of France?", namespace="acme").kind == "exact"
    assert cache.get("what is the capital of france", namespace="acme").kind == "semantic"
    assert cache.get("What is the capital of France?", namespace="globex") is None  # other tenant
    assert cache.get("Who wrote Hamlet?") is None  # the default namespace

    acme = cache.namespace_stats("acme")
    assert (acme["lookups"], acme["hits"], acme["misses"], acme["sets"]) == (2, 2, 0, 1)
    assert (acme["hits_exact"], acme["hits_semantic"]) == (1, 1)
    assert acme["saved_tokens"] == 80 and acme["saved_cost_usd"] == pytest.approx(0.004)
    globex = cache.namespace_stats("globex")
    assert (globex["lookups"], globex["misses"], globex["sets"], globex["saved_tokens"]) == (1, 1, 1, 0)
    default = cache.namespace_stats(None)
    assert default["namespace"] is None and default["misses"] == 1 and default["hit_rate"] == 0.0
    never = cache.namespace_stats("initech")
    assert never["tracked"] is False and never["lookups"] == 0 and never["hit_rate"] is None
    # the namespaces add up to the cache-wide counters
    whole = cache.stats()
    assert whole["hits"] == 2 and whole["misses"] == 2 and whole["sets"] == 2
    assert whole["namespaces_tracked"] == 3

    # batched lookups are counted per namespace too
    outcomes = cache.lookup_many(
        [cache.request("What is the capital of France?", namespace="acme"), cache.request("Nothing like it", namespace="globex")]
    )
    assert outcomes[0].hit is not None and outcomes[1].hit is None
    assert cache.namespace_stats("acme")["hits"] == 3 and cache.namespace_stats("globex")["misses"] == 2


def test_tenant_metrics_limit_is_a_checked_setting():
    assert ServerConfig.from_env(environ={"SEMCACHE_TENANT_METRICS_LIMIT": "7"}).tenant_metrics_limit == 7
    with pytest.raises(ConfigurationError, match="tenant_metrics_limit"):
        ServerConfig(tenant_metrics_limit=-1)
