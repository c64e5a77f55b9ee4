"""L2 on a real Redis Cluster (3 masters, a replica each): sharding, invalidation by
SCAN on every master, sharded pub/sub between replicas, the cross-process lock, the
configuration from the environment, and a master's failover under the event
listener (on a private cluster, :class:`tests._servers.RedisClusterServer`).

Waits are bounded polls on conditions, never fixed sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from semcache import CacheConfig, Policy, RedisConfig, SQLConfig
from semcache.tiers.redis import CLUSTER_BUCKETS, RedisBackend, _glob_escape, cluster_bucket_tags
from semcache.types import Selector

pytestmark = pytest.mark.redis_cluster

NOW = 1_700_000_000.0


def eventually(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    wait = threading.Event()
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        wait.wait(0.02)


def _client(tier: RedisBackend) -> Any:
    return tier.client.semcache_client()


def keys_per_master(tier: RedisBackend, prefix: str) -> dict[str, int]:
    """How many keys under ``prefix`` each master holds (SCAN on that node alone)."""
    client = _client(tier)
    return {
        node.name: sum(1 for _ in client.scan_iter(match=_glob_escape(prefix) + "*", count=500, target_nodes=node))
        for node in client.get_primaries()
    }


def drop_prefix(tier: RedisBackend, prefix: str) -> None:
    client = _client(tier)
    for name in list(client.scan_iter(match=_glob_escape(prefix) + "*", count=500)):
        client.delete(name)


@pytest.fixture
def cluster_url(redis_cluster_urls) -> str:
    return ",".join(redis_cluster_urls)


@pytest.fixture
def cleanup(cluster_url, key_prefix) -> Iterator[None]:
    yield
    tier = RedisBackend(cluster_url, prefix=key_prefix, cluster=True)
    drop_prefix(tier, key_prefix)
    tier.close()


def redis_tier(cache) -> RedisBackend:
    return next(t for t in cache.tiers if isinstance(t, RedisBackend))


def test_bucket_tags_spread_over_the_slot_space():
    from redis.crc import key_slot

    tags = cluster_bucket_tags()
    assert len(tags) == len(set(tags)) == CLUSTER_BUCKETS
    for i, tag in enumerate(tags):
        assert i * 16384 // CLUSTER_BUCKETS <= key_slot(tag.encode()) < (i + 1) * 16384 // CLUSTER_BUCKETS


def test_entries_of_one_cache_land_on_every_master(make_cache, cluster_url, key_prefix, cleanup):
    cache = make_cache(redis=RedisConfig(url=cluster_url, prefix=key_prefix, cluster=True))
    tier = redis_tier(cache)
    assert tier.cluster
    for i in range(60):
        cache.set(f"question number {i}", f"answer {i}", model="m")
    per_master = keys_per_master(tier, key_prefix)
    assert len(per_master) == 3
    assert all(n > 0 for n in per_master.values()), per_master
    # the entries, not only the floors: every entry is read back through L2 alone
    assert sum(1 for _ in tier.iter_entries()) == 60
    assert sum(per_master.values()) >= 60


def test_invalidation_by_tag_and_namespace_finds_entries_on_every_master(make_cache, clock, cluster_url, key_prefix, cleanup):
    cache = make_cache(redis=RedisConfig(url=cluster_url, prefix=key_prefix, cluster=True))
    tier = redis_tier(cache)
    client = _client(tier)
    N = 180  # (the keys are fixed: 30 untagged entries of namespace b, on all 3 masters)
    for i in range(N):
        cache.set(f"prompt {i}", i, model="m", namespace="a" if i % 3 else "b", tags=("t",) if i % 2 else ())

    def masters_holding(pred) -> set[str]:
        found: set[str] = set()
        for node in client.get_primaries():
            for raw in client.scan_iter(match=_glob_escape(key_prefix) + "{*}e:*", count=500, target_nodes=node):
                e = tier.get(raw.decode().split("}e:", 1)[1], clock())
                if e is not None and pred(e):
                    found.add(node.name)
        return found

    assert len(masters_holding(lambda e: "t" in e.tags)) == 3
    tagged = sum(1 for i in range(N) if i % 2)
    assert cache.invalidate(tag="t") >= tagged
    assert masters_holding(lambda e: "t" in e.tags) == set()
    left = [e for e in tier.iter_entries()]
    assert len(left) == N - tagged and all("t" not in e.tags for e in left)

    assert len(masters_holding(lambda e: e.namespace == "b")) == 3
    cache.invalidate(namespace="b")
    assert masters_holding(lambda e: e.namespace == "b") == set()
    assert {e.namespace for e in tier.iter_entries()} == {"a"}

    # a flush raises every bucket's floor: an older write is refused in every bucket
    assert tier.invalidate(Selector.everything(), clock(), version=2**62)
    assert list(tier.iter_entries()) == []
    floors = [client.get(f"{key_prefix}{{{t}}}floor") for t in cluster_bucket_tags()]
    assert all(f is not None for f in floors)


def _two_replicas(make_cache, cluster_url, key_prefix, **policy):
    # no change-log polling: what reaches the other replica comes over pub/sub alone
    pol = Policy(similarity_threshold=0.8, verifier=None, log_poll_seconds=None, **policy)
    cfg = RedisConfig(url=cluster_url, prefix=key_prefix, cluster=True)
    return make_cache(redis=cfg, policy=pol), make_cache(redis=cfg, policy=pol)


def test_an_invalidation_reaches_the_other_replica_over_sharded_pubsub(make_cache, cluster_url, key_prefix, cleanup):
    a, b = _two_replicas(make_cache, cluster_url, key_prefix)
    listener = b._replicas.listener
    assert listener is not None and listener.cluster
    assert listener.subscribed.wait(10)
    client = _client(redis_tier(a))
    channel = f"{key_prefix}events"
    # both replicas hold a sharded subscription, on the master of the channel's slot
    counts = client.pubsub_shardnumsub(channel, target_nodes=client.get_node_from_key(channel))
    assert dict((k.decode(), v) for k, v in counts)[channel] == 2
    assert dict(client.pubsub_numsub(channel, target_nodes=client.get_node_from_key(channel)))[channel.encode()] == 0

    a.set("What is the capital of France?", "Paris", model="m")
    req = b.request("What is the capital of France?", model="m")
    assert b.lookup(req) is not None  # now in b's own L1
    assert b.lookup_memory(req) is not None
    a.invalidate(key=req.key)
    assert eventually(lambda: b.lookup_memory(req) is None, 10), "the invalidation never reached the other replica"
    assert b.get("What is the capital of France?", model="m") is None


def test_the_lock_makes_one_llm_call_for_two_replicas(make_cache, cluster_url, key_prefix, cleanup):
    a, b = _two_replicas(make_cache, cluster_url, key_prefix)
    calls: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def llm(prompt: str) -> str:
        calls.append(prompt)
        entered.set()
        assert release.wait(20)
        return f"answer to {prompt}"

    ask_a = a.cached(lock=True)(llm)
    ask_b = b.cached(lock=True)(llm)
    lock_b = ask_b.cache_logic._get_lock()
    assert lock_b is not None and lock_b.cluster
    refused = threading.Event()
    real_acquire = lock_b.acquire

    def acquire(key: str) -> str | None:
        token = real_acquire(key)
        if token is None:
            refused.set()
        return token

    lock_b.acquire = acquire
    results: dict[str, str] = {}
    ta = threading.Thread(target=lambda: results.__setitem__("a", ask_a("q")))
    ta.start()
    assert entered.wait(10)
    tb = threading.Thread(target=lambda: results.__setitem__("b", ask_b("q")))
    tb.start()
    assert refused.wait(10), "the second replica never met the first one's lock"
    release.set()
    ta.join(20)
    tb.join(20)
    assert results == {"a": "answer to q", "b": "answer to q"}
    assert calls == ["q"]
    key = ask_a.cache_request("q").key
    assert not lock_b.held(key)


def test_a_cluster_cache_from_the_environment(cluster_url, key_prefix, sqlite_url, hashing_embedder, cleanup):
    from semcache import SemanticCache

    env = {"SEMCACHE_REDIS_URL": cluster_url, "SEMCACHE_REDIS_CLUSTER": "1", "SEMCACHE_SQL_URL": sqlite_url}
    config = CacheConfig.from_env(environ=env)
    assert config.redis is not None and config.redis.cluster
    # a prefix of this test's own on the shared cluster, and the toy embedder
    config = dataclasses.replace(
        config,
        redis=dataclasses.replace(config.redis, prefix=key_prefix),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:
        tier = redis_tier(cache)
        assert tier.cluster
        cache.set("from the environment", "yes", model="m")
        key = cache.request("from the environment", model="m").key
        got = tier.get(key, time.time())
        assert got is not None and got.value == "yes"
        assert cache.health()["l2"] == "ok"


def test_the_sidecar_config_takes_the_cluster_flag(cluster_url):
    from semcache.server.config import ServerConfig

    cfg = ServerConfig.load(environ={"SEMCACHE_REDIS_URL": cluster_url, "SEMCACHE_REDIS_CLUSTER": "1", "SEMCACHE_SQL_URL": "none"})
    assert cfg.cache.redis is not None and cfg.cache.redis.cluster
    assert cfg.describe()["tiers"]["l2"].startswith("cluster redis://")
    flagged = ServerConfig.load(environ={}, redis_url=cluster_url, redis_cluster=True, sql_url="none")
    assert flagged.cache.redis is not None and flagged.cache.redis.cluster


# -- a failover of the master that carries the events ----------------------------------


@pytest.fixture
def own_cluster():
    import os

    from tests._servers import RedisClusterServer, RedisServerUnavailable

    try:
        server = RedisClusterServer()
    except RedisServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with server:
        yield server


def test_events_survive_a_failover_of_the_channel_master(make_cache, own_cluster, key_prefix):
    a, b = _two_replicas(make_cache, own_cluster.url, key_prefix)
    listener = b._replicas.listener
    assert listener is not None and listener.subscribed.wait(10)
    node = listener.node
    assert node is not None
    port = int(node.rsplit(":", 1)[1])
    assert port in own_cluster.master_ports()

    killed_at = time.monotonic()
    own_cluster.kill_master(port)
    took = own_cluster.wait_failover(port)
    print(f"\nfailover of {port}: {took:.2f}s")
    # the listener moves to the promoted replica and counts the gap
    assert eventually(lambda: listener.subscribed.is_set() and listener.node not in (None, node), 30)
    assert listener.subscriptions >= 2
    print(f"resubscribed {time.monotonic() - killed_at:.2f}s after the kill")

    prompt = "after the failover"
    req = b.request(prompt, model="m")

    def stored_and_seen() -> bool:
        try:
            a.set(prompt, "v", model="m")
        except Exception:
            return False
        return b.lookup(req) is not None and b.lookup_memory(req) is not None

    assert eventually(stored_and_seen, 30)
    a.invalidate(key=req.key)
    assert eventually(lambda: b.lookup_memory(req) is None, 15), "no event reached the replica after the failover"

    own_cluster.restart(port)
    assert port not in own_cluster.master_ports()


def test_the_cli_reads_a_cluster_with_the_flag(cluster_url, key_prefix, hashing_embedder, cleanup):
    import json

    from click.testing import CliRunner

    from semcache import SemanticCache
    from semcache.cli.main import cli

    config = CacheConfig(redis=RedisConfig(url=cluster_url, prefix=key_prefix, cluster=True), sql=None,
                         embedder=hashing_embedder, policy=Policy(verifier=None))
    with SemanticCache(config) as cache:
        for i in range(5):
            cache.set(f"cli question {i}", i, model="m")
    args = ["--redis-url", cluster_url, "--redis-cluster", "--redis-prefix", key_prefix, "--sql-url", "none",
            "--embedder", "none", "stats", "--json"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    l2 = json.loads(r.stdout)["tiers"]["l2"]
    assert l2["status"] == "ok" and l2["cluster"] is True and l2["entries_live"] == 5
