"""One contract suite for every storage tier: memory, fakeredis, real Redis, a real
Redis Cluster, SQLite, PostgreSQL.

"Implements the Backend protocol" means "passes this suite".
"""

from __future__ import annotations

import pytest

from semcache.serde import dumps
from semcache.tiers.base import Backend
from semcache.types import Entry, Selector

NOW = 1_700_000_000.0


def make_entry(key="k1", *, scope="s1", prompt="hello world", value="v", expires_at=None, namespace="ns",
               model="m", tags=(), created_at=NOW, embedding=None):
    return Entry(
        key=key, scope=scope, prompt=prompt, payload=dumps(value), created_at=created_at,
        expires_at=expires_at, namespace=namespace, model=model, tags=tuple(tags), metadata={"a": 1},
        embedding=embedding, embedder_id="hashing-4" if embedding else None, ttl_seconds=None,
    )


@pytest.fixture(
    params=[
        "memory",
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis_cluster", marks=pytest.mark.redis_cluster),
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request, tmp_path, key_prefix):
    kind = request.param
    if kind == "memory":
        from semcache.tiers.memory import MemoryBackend

        b = MemoryBackend()
    elif kind == "fakeredis":
        import fakeredis

        from semcache.tiers.redis import RedisBackend

        b = RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis())
    elif kind == "redis":
        from semcache.tiers.redis import RedisBackend

        b = RedisBackend(request.getfixturevalue("redis_url"), prefix=key_prefix)
    elif kind == "redis_cluster":
        from semcache.tiers.redis import RedisBackend

        b = RedisBackend(",".join(request.getfixturevalue("redis_cluster_urls")), prefix=key_prefix, cluster=True)
    elif kind == "sqlite":
        from semcache.tiers.sql import SQLBackend

        b = SQLBackend(f"sqlite:///{tmp_path}/c.db")
        b.open()
    else:
        from semcache.tiers.sql import SQLBackend

        b = SQLBackend(request.getfixturevalue("pg_schema_url"))
        b.open()
    yield b
    if kind == "redis":
        b.invalidate(Selector.everything(), NOW)  # only this test's prefix
    elif kind == "redis_cluster":
        _drop_prefix(b, key_prefix)
    b.close()


def _drop_prefix(b, prefix: str) -> None:
    """Delete every key under ``prefix`` on every master of the cluster (and nothing else)."""
    from semcache.tiers.redis import _glob_escape

    client = b.client.semcache_client()
    names = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=500))
    for name in names:
        client.delete(name)


def test_implements_protocol(backend):
    assert isinstance(backend, Backend)


def test_roundtrip(backend):
    e = make_entry(value={"answer": [1, 2, "ü"]}, tags=("a", "b"))
    backend.set(e, NOW)
    got = backend.get("k1", NOW)
    assert got is not None
    assert got.value == {"answer": [1, 2, "ü"]}
    assert (got.key, got.scope, got.prompt, got.namespace, got.model) == ("k1", "s1", "hello world", "ns", "m")
    assert set(got.tags) == {"a", "b"} and got.metadata == {"a": 1}
    assert got.created_at == NOW


def test_bytes_roundtrip(backend):
    backend.set(make_entry(value=b"\x00\xffbinary"), NOW)
    assert backend.get("k1", NOW).value == b"\x00\xffbinary"


def test_missing_key(backend):
    assert backend.get("nope", NOW) is None


def test_expired_entry_is_not_served(backend):
    backend.set(make_entry(expires_at=NOW + 10), NOW)
    assert backend.get("k1", NOW + 9.5) is not None
    assert backend.get("k1", NOW + 10) is None


def test_already_expired_entry_is_not_stored(backend):
    backend.set(make_entry(expires_at=NOW - 1), NOW)
    assert backend.get("k1", NOW) is None


def test_max_ttl_caps_life(backend):
    backend.max_ttl_seconds = 5
    backend.set(make_entry(expires_at=None), NOW)
    assert backend.get("k1", NOW + 4) is not None
    assert backend.get("k1", NOW + 6) is None


def test_overwrite_replaces_value_and_tags(backend):
    backend.set(make_entry(value="old", tags=("x",)), NOW)
    backend.set(make_entry(value="new", tags=("y",)), NOW)
    got = backend.get("k1", NOW)
    assert got.value == "new" and got.tags == ("y",)
    assert backend.invalidate(Selector(tag="x"), NOW) == []


def test_delete(backend):
    backend.set(make_entry("a"), NOW)
    backend.set(make_entry("b"), NOW)
    assert backend.delete(["a", "zzz"]) == 1
    assert backend.get("a", NOW) is None and backend.get("b", NOW) is not None


@pytest.mark.parametrize(
    "selector, expected",
    [
        (Selector(keys=("a", "c")), {"a", "c"}),
        (Selector(scope="s2"), {"b", "c"}),
        (Selector(namespace="t2"), {"c"}),
        (Selector(model="m2"), {"b"}),
        (Selector(tag="red"), {"a", "b"}),
        (Selector(tag="red", model="m2"), {"b"}),
        (Selector(keys=("a", "c"), namespace="t1"), {"a"}),
        (Selector(older_than_seconds=50), {"a"}),
        (Selector(prompt_pattern="*paris*"), {"b"}),
        (Selector(), set()),
        (Selector.everything(), {"a", "b", "c"}),
    ],
)
def test_invalidate(backend, selector, expected):
    backend.set(make_entry("a", scope="s1", namespace="t1", model="m1", tags=("red",), created_at=NOW - 100, prompt="to rome"), NOW)
    backend.set(make_entry("b", scope="s2", namespace="t1", model="m2", tags=("red", "blue"), prompt="to paris now"), NOW)
    backend.set(make_entry("c", scope="s2", namespace="t2", model="m1", tags=(), prompt="to berlin"), NOW)
    gone = backend.invalidate(selector, NOW)
    assert set(gone) == expected
    for k in "abc":
        assert (backend.get(k, NOW) is None) == (k in expected)


def test_stats_is_a_dict(backend):
    backend.set(make_entry(), NOW)
    assert isinstance(backend.stats(), dict)


async def test_async_protocol_through_the_adapter(backend):
    """Every tier also serves the AsyncBackend protocol through ThreadedAsyncBackend."""
    from semcache.tiers.base import AsyncBackend, ThreadedAsyncBackend

    ab = ThreadedAsyncBackend(backend)
    assert isinstance(ab, AsyncBackend)
    await ab.set(make_entry("a", tags=("t",)), NOW)
    await ab.set(make_entry("b", expires_at=NOW + 1), NOW)
    assert (await ab.get("a", NOW)).value == "v"
    assert await ab.get("b", NOW + 2) is None
    await ab.set(make_entry("c"), NOW)
    assert await ab.invalidate(Selector(tag="t"), NOW) == ["a"]
    assert await ab.delete(["c"]) == 1
    assert await ab.get("c", NOW) is None
    assert isinstance(ab.stats(), dict)


def test_set_many(backend):
    backend.set_many([make_entry("a"), make_entry("b", expires_at=NOW - 1), make_entry("c", value="x")], NOW)
    assert backend.get("a", NOW) is not None and backend.get("b", NOW) is None
    assert backend.get("c", NOW).value == "x"


# -- versions and tombstones (semcache.versions): what keeps replays and promotions safe --


def _v(entry, version):
    import dataclasses

    return dataclasses.replace(entry, version=version)


def test_an_older_version_never_replaces_a_newer_one(backend):
    backend.set(_v(make_entry(value="new"), 200), NOW)
    backend.set(_v(make_entry(value="old"), 100), NOW)
    got = backend.get("k1", NOW)
    assert got.value == "new" and got.version == 200
    backend.set_many([_v(make_entry(value="older"), 50)], NOW)
    assert backend.get("k1", NOW).value == "new"
    backend.set(_v(make_entry(value="newer"), 300), NOW)
    assert backend.get("k1", NOW).value == "newer"


def test_a_versioned_delete_leaves_a_tombstone_that_refuses_older_writes(backend):
    backend.set(_v(make_entry(value="v"), 100), NOW)
    assert backend.delete(["k1"], 200) == 1
    assert backend.get("k1", NOW) is None
    backend.set(_v(make_entry(value="stale copy"), 100), NOW)  # a late promotion or replay
    assert backend.get("k1", NOW) is None
    backend.set(_v(make_entry(value="later write"), 300), NOW)
    assert backend.get("k1", NOW).value == "later write"


def test_a_versioned_delete_never_removes_a_newer_write(backend):
    backend.set(_v(make_entry(value="newer"), 300), NOW)
    assert backend.delete(["k1"], 200) == 0  # an older, queued delete
    assert backend.get("k1", NOW).value == "newer"


def test_a_delete_of_a_key_never_stored_still_refuses_older_writes(backend):
    backend.delete(["k1"], 200)
    backend.set(_v(make_entry(value="stale"), 100), NOW)
    assert backend.get("k1", NOW) is None


def test_a_versioned_selector_invalidation_refuses_older_copies(backend):
    backend.set(_v(make_entry("a", tags=("red",)), 100), NOW)
    backend.set(_v(make_entry("b", tags=("red",)), 400), NOW)
    assert set(backend.invalidate(Selector(tag="red"), NOW, 300)) == {"a"}
    assert backend.get("b", NOW) is not None  # newer than the invalidation
    backend.set(_v(make_entry("a", tags=("red",)), 100), NOW)
    assert backend.get("a", NOW) is None


def test_a_versioned_flush_refuses_everything_older(backend):
    backend.set(_v(make_entry("a"), 100), NOW)
    backend.set(_v(make_entry("b"), 400), NOW)
    backend.invalidate(Selector.everything(), NOW, 300)
    assert backend.get("a", NOW) is None and backend.get("b", NOW) is not None
    if hasattr(backend, "replay_writes"):
        backend.replay_writes([_v(make_entry("c"), 200)], NOW)  # L3 checks its floor on replays
    else:
        backend.set(_v(make_entry("c"), 200), NOW)
    assert backend.get("c", NOW) is None
    backend.set(_v(make_entry("d"), 500), NOW)
    assert backend.get("d", NOW) is not None
