"""The cache facade over L1 + L2 (fakeredis) + L3 (SQLite): TTL, promotion, expiry,
invalidation, bad input, corrupt values, failing tiers, concurrent writers."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from semcache import (
    CacheConfig,
    InvalidInputError,
    MemoryConfig,
    Policy,
    SemanticCache,
    SerializationError,
    SQLConfig,
)
from semcache.errors import BackendUnavailable, ConfigurationError
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend


@pytest.fixture
def three_tier(clock, sqlite_url, key_prefix):
    l1 = MemoryBackend()
    l2 = RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis())
    l3 = SQLBackend(sqlite_url)
    cache = SemanticCache(CacheConfig(embedder=None), timer=clock, tiers=[l1, l2, l3]).open()
    yield cache, l1, l2, l3
    cache.close()


def test_exact_hit_from_l1(three_tier):
    cache, *_ = three_tier
    cache.set("What is 2+2?", "4", model="m")
    hit = cache.get("What is 2+2?", model="m")
    assert hit.value == "4" and hit.tier == "l1" and hit.kind == "exact" and hit.similarity == 1.0
    assert cache.get("What is 2+2?", model="other") is None


def test_write_through_reaches_every_tier(three_tier, clock):
    cache, l1, l2, l3 = three_tier
    e = cache.set("q", {"a": 1}, ttl_seconds=60)
    for tier in (l1, l2, l3):
        assert tier.get(e.key, clock()).value == {"a": 1}


def test_promotion_carries_remaining_ttl(three_tier, clock):
    cache, l1, l2, l3 = three_tier
    e = cache.set("q", "v", ttl_seconds=100)
    l1.delete([e.key])
    l2.delete([e.key])
    clock.advance(40)
    hit = cache.get("q")
    assert hit.tier == "l3"
    assert hit.ttl_seconds_left == pytest.approx(60)
    # promoted copies keep the original expiry: promotion never extends life
    assert l1.get(e.key, clock()).expires_at == pytest.approx(e.expires_at)
    assert l2.get(e.key, clock()).expires_at == pytest.approx(e.expires_at)
    assert cache.get("q").tier == "l1"
    clock.advance(61)
    assert cache.get("q") is None


def test_promotion_capped_by_upper_tier_max_ttl(clock, sqlite_url):
    l1 = MemoryBackend(max_ttl_seconds=10)
    l3 = SQLBackend(sqlite_url)
    with SemanticCache(CacheConfig(embedder=None), timer=clock, tiers=[l1, l3]) as cache:
        e = cache.set("q", "v", ttl_seconds=1000)
        l1.delete([e.key])
        assert cache.get("q").tier == "l3"
        clock.advance(11)
        assert l1.get(e.key, clock()) is None  # capped in L1
        assert cache.get("q").tier == "l3"  # still alive below


def test_expired_entry_not_served_from_stale_l1(three_tier, clock):
    cache, l1, _, l3 = three_tier
    e = cache.set("q", "v", ttl_seconds=10)
    assert l1.get(e.key, clock()) is not None
    clock.advance(10.5)
    assert cache.get("q") is None
    assert cache.get_entry(e.key) is None


def test_l3_shortened_expiry_not_outlived_by_l1_after_invalidation(three_tier, clock):
    cache, l1, l2, l3 = three_tier
    e = cache.set("q", "v", ttl_seconds=1000, tags=["t"])
    assert cache.invalidate(tag="t") == 1
    assert l1.get(e.key, clock()) is None and l2.get(e.key, clock()) is None and l3.get(e.key, clock()) is None
    assert cache.get("q") is None


def test_sliding_expiry_is_opt_in(clock, sqlite_url):
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url), policy=Policy(sliding_expiry=True))
    with SemanticCache(cfg, timer=clock) as cache:
        cache.set("q", "v", ttl_seconds=10)
        for _ in range(5):
            clock.advance(8)
            assert cache.get("q") is not None
        clock.advance(11)
        assert cache.get("q") is None


def test_no_sliding_by_default(three_tier, clock):
    cache, *_ = three_tier
    cache.set("q", "v", ttl_seconds=10)
    clock.advance(8)
    assert cache.get("q") is not None
    clock.advance(3)
    assert cache.get("q") is None


def test_ttl_none_never_expires_and_default_applies(three_tier, clock):
    cache, *_ = three_tier
    forever = cache.set("a", "v", ttl_seconds=None)
    default = cache.set("b", "v")
    assert forever.expires_at is None
    assert default.expires_at == pytest.approx(clock() + Policy().default_ttl_seconds)


def test_sweep_deletes_expired_rows(three_tier, clock):
    cache, _, _, l3 = three_tier
    cache.set("a", "v", ttl_seconds=5)
    cache.set("b", "v", ttl_seconds=500)
    clock.advance(10)
    assert cache.sweep() == 1
    assert l3.count() == 1


@pytest.mark.parametrize("ttl", [-1, 0, float("nan"), "10", True])
def test_bad_ttl_is_a_typed_error_and_stores_nothing(three_tier, ttl):
    cache, _, _, l3 = three_tier
    with pytest.raises(InvalidInputError):
        cache.set("q", "v", ttl_seconds=ttl)
    assert l3.count() == 0


def test_unserialisable_value_is_a_typed_error_and_keeps_old_value(three_tier):
    cache, *_ = three_tier
    cache.set("q", "old")
    with pytest.raises(SerializationError):
        cache.set("q", object())
    with pytest.raises(SerializationError):
        cache.set("q", {"x": float("nan")})
    assert cache.get("q").value == "old"


def test_empty_prompt_and_bad_invalidate(three_tier):
    cache, *_ = three_tier
    with pytest.raises(InvalidInputError):
        cache.set("   ", "v")
    with pytest.raises(InvalidInputError):
        cache.get("")
    with pytest.raises(InvalidInputError):
        cache.invalidate()
    with pytest.raises(InvalidInputError):
        cache.invalidate(older_than_seconds=-5)


def test_unknown_url_schemes_are_configuration_errors():
    from semcache import RedisConfig

    with pytest.raises(ConfigurationError):
        SQLConfig(url="mysql://x/y")
    with pytest.raises(ConfigurationError):
        RedisConfig(url="http://localhost:6379")
    with pytest.raises(ConfigurationError):
        CacheConfig(memory=None, sql=None)


def test_secrets_redacted_in_repr():
    from semcache import RedisConfig

    r = repr(RedisConfig(url="redis://user:hunter2@host:6379/0"))
    s = repr(SQLConfig(url="postgresql+psycopg://u:hunter2@h/db"))
    assert "hunter2" not in r and "hunter2" not in s and "***" in r


def test_corrupt_l2_value_is_a_miss_and_removed(three_tier, clock, key_prefix):
    cache, l1, l2, l3 = three_tier
    e = cache.set("q", "v")
    l1.delete([e.key])
    l3.delete([e.key])
    l2.client.set(f"{key_prefix}e:{e.key}", b"\xff garbage")
    assert cache.get("q") is None
    assert l2.client.get(f"{key_prefix}e:{e.key}") is None


def test_corrupt_l3_row_is_a_miss_and_removed(three_tier, clock):
    from sqlalchemy import text

    cache, l1, l2, l3 = three_tier
    e = cache.set("q", "v")
    l1.delete([e.key])
    l2.delete([e.key])
    with l3.engine.begin() as conn:
        conn.execute(text("UPDATE semcache_entries SET payload = :p"), {"p": b"jnot json{"})
    assert cache.get("q") is None
    assert l3.count() == 0


def test_invalidate_by_each_criterion(three_tier, clock):
    cache, *_ = three_tier
    cache.set("a", 1, model="m1", namespace="t1", tags=["x"])
    cache.set("b", 2, model="m2", namespace="t1")
    clock.advance(100)
    cache.set("c", 3, model="m1", namespace="t2", tags=["x"])
    assert cache.invalidate(model="m2") == 1
    assert cache.invalidate(older_than_seconds=50) == 1  # "a"
    assert cache.invalidate(namespace="t1") == 0
    assert cache.invalidate(tag="x") == 1
    assert cache.get("c", model="m1", namespace="t2") is None
    cache.set("d", 4)
    assert cache.invalidate(key=cache.request("d").key) == 1
    cache.set("e", 5)
    cache.set("f", 6, model="m")
    assert cache.invalidate(scope=cache.request("f", model="m").scope) == 1
    assert cache.flush() == 1


class _DownTier:
    """A tier whose every call fails like a dead server."""

    name = "l2"
    max_ttl_seconds = None

    def __init__(self):
        self.calls = 0
        self.up = False
        self.data = {}

    def _check(self):
        self.calls += 1
        if not self.up:
            raise BackendUnavailable("connection refused")

    def get(self, key, now):
        self._check()
        return self.data.get(key)

    def set(self, entry, now, *, token=None):
        self._check()
        self.data[entry.key] = entry
        return True

    def set_many(self, entries, now):
        for e in entries:
            self.set(e, now)

    def delete(self, keys, version=None):
        self._check()
        return sum(1 for k in keys if self.data.pop(k, None))

    def invalidate(self, selector, now, version=None):
        self._check()
        return []

    def stats(self):
        return {}

    def close(self):
        pass


def test_failing_tier_degrades_with_backoff_and_recovers(clock, sqlite_url, backoff_clock):
    down = _DownTier()
    l1 = MemoryBackend()
    pol = Policy(backoff_initial_seconds=0.05, backoff_max_seconds=0.05)
    with SemanticCache(CacheConfig(embedder=None, policy=pol), timer=clock, monotonic=backoff_clock, tiers=[l1, down, SQLBackend(sqlite_url)]) as cache:
        e = cache.set("q", "v")  # L2 fails; L3 and L1 still written
        assert cache.get("q").value == "v"
        l1.delete([e.key])
        for _ in range(20):
            assert cache.get("q").tier == "l3"
            l1.delete([e.key])
        # back-off: the dead tier was not hammered on every call
        assert down.calls < 5
        assert cache.stats()["tier_errors"]["l2"] >= 1
        backoff_clock.advance(0.06)  # past the back-off
        down.up = True
        assert cache.get("q").tier == "l3"  # retried after the back-off, then promoted into L2
        assert e.key in down.data


def test_on_backend_error_raise(clock, sqlite_url):
    cfg = CacheConfig(embedder=None, policy=Policy(on_backend_error="raise"))
    with SemanticCache(cfg, timer=clock, tiers=[_DownTier()]) as cache:
        with pytest.raises(BackendUnavailable):
            cache.get("q")


def test_concurrent_writers_lose_nothing(clock, sqlite_url):
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url), memory=MemoryConfig(max_entries=10))
    with SemanticCache(cfg, timer=clock) as cache:
        def writer(t):
            for i in range(50):
                cache.set(f"thread {t} prompt {i}", {"t": t, "i": i})

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        l3 = cache.tiers[-1]
        assert l3.count() == 400
        for t in range(8):
            for i in (0, 25, 49):
                assert cache.get(f"thread {t} prompt {i}").value == {"t": t, "i": i}
        assert cache.stats()["evictions"] > 0  # L1 bound of 10 entries held


def test_l1_bounded_by_bytes(clock):
    l1 = MemoryBackend(max_entries=1000, max_bytes=20_000)
    with SemanticCache(CacheConfig(embedder=None, sql=None, memory=MemoryConfig()), timer=clock, tiers=[l1]) as cache:
        for i in range(100):
            cache.set(f"p{i}", "x" * 1000)
        st = l1.stats()
        assert st["bytes"] <= 20_000 and st["entries"] < 100 and st["evictions"] > 0


def test_stats_counts(three_tier):
    cache, *_ = three_tier
    cache.set("q", "v")
    cache.get("q")
    cache.get("nope")
    st = cache.stats()
    assert st["hits_l1"] == 1 and st["misses"] == 1 and st["sets"] == 1
    assert st["l1_bytes"] > 0


def test_closed_cache_refuses(clock):
    cache = SemanticCache(CacheConfig(embedder=None, sql=None), timer=clock).open()
    cache.close()
    with pytest.raises(ConfigurationError):
        cache.get("q")


async def test_async_facade(clock, sqlite_url):
    from semcache import AsyncSemanticCache

    async with AsyncSemanticCache(CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url)), timer=clock) as cache:
        await cache.set("q", "v", model="m")
        hit = await cache.get("q", model="m")
        assert hit.value == "v" and hit.tier == "l1"
        assert await cache.get("q", model="x") is None
        assert await cache.invalidate(model="m") == 1
        assert await cache.get("q", model="m") is None


# -- behaviour found by review: each test fails on the code before its fix -------------


def test_invalidation_while_l3_is_down_is_applied_when_it_returns(clock, sqlite_url, backoff_clock):
    l1 = MemoryBackend()
    l3 = SQLBackend(sqlite_url)
    flaky = _Flaky(l3)
    pol = Policy(backoff_initial_seconds=0.01, backoff_max_seconds=0.01)
    with SemanticCache(CacheConfig(embedder=None, policy=pol), timer=clock, monotonic=backoff_clock, tiers=[l1, flaky]) as cache:
        e = cache.set("q", "v", tags=["t"])
        flaky.down = True
        cache.invalidate(tag="t")  # L1 drops it; L3 is down and still holds it
        flaky.down = False
        backoff_clock.advance(0.02)  # past the back-off
        assert cache.get("q") is None  # L3 applied the missed invalidation first
        assert l3.get(e.key, clock()) is None


def test_overwrite_while_l3_is_down_never_serves_the_old_value_later(clock, sqlite_url, backoff_clock):
    l1 = MemoryBackend()
    l3 = SQLBackend(sqlite_url)
    flaky = _Flaky(l3)
    pol = Policy(backoff_initial_seconds=0.01, backoff_max_seconds=0.01)
    with SemanticCache(CacheConfig(embedder=None, policy=pol), timer=clock, monotonic=backoff_clock, tiers=[l1, flaky]) as cache:
        e = cache.set("q", "old")
        flaky.down = True
        cache.set("q", "new")
        flaky.down = False
        backoff_clock.advance(0.02)  # past the back-off
        l1.delete([e.key])  # evicted
        hit = cache.get("q")
        assert hit is None or hit.value == "new"


def test_a_lookup_racing_an_invalidation_does_not_promote_the_old_entry(clock, sqlite_url):
    l1 = MemoryBackend()
    l3 = SQLBackend(sqlite_url)
    with SemanticCache(CacheConfig(embedder=None), timer=clock, tiers=[l1, l3]) as cache:
        e = cache.set("q", "v")
        l1.delete([e.key])
        real_get = l3.get

        def get_then_race(key, now):
            entry = real_get(key, now)
            cache.invalidate(key=e.key)  # lands between the read and the promotion
            return entry

        l3.get = get_then_race
        cache.get("q")
        l3.get = real_get
        assert l1.get(e.key, clock()) is None
        assert cache.get("q") is None


def test_a_failed_statement_does_not_take_the_tier_down(clock, sqlite_url):
    from semcache.errors import BackendError

    class Picky(MemoryBackend):
        def set(self, entry, now):
            if entry.prompt == "bad":
                raise BackendError("value rejected")
            super().set(entry, now)

    tier = Picky()
    with SemanticCache(CacheConfig(embedder=None), timer=clock, tiers=[tier]) as cache:
        cache.set("bad", "x")
        cache.set("good", "y")  # the tier was not put in back-off by the other statement
        assert cache.get("good").value == "y"
        assert cache.stats()["tier_errors"]["l1"] == 1


@pytest.mark.parametrize("ttl", [1e17, float("inf")])
def test_absurd_ttls_are_refused(three_tier, ttl):
    cache, *_ = three_tier
    with pytest.raises(InvalidInputError):
        cache.set("q", "v", ttl_seconds=ttl)
    with pytest.raises(ConfigurationError):
        Policy(default_ttl_seconds=ttl)


def test_set_many_stores_nothing_when_one_item_is_bad(three_tier):
    cache, _, _, l3 = three_tier
    items = [{"prompt": f"p{i}", "value": i} for i in range(5)] + [{"prompt": "bad", "value": object()}]
    with pytest.raises(SerializationError):
        cache.set_many(items, batch_size=2)
    assert l3.count() == 0


def test_in_memory_sqlite_is_safe_across_threads(clock):
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url="sqlite://"), memory=None)
    with SemanticCache(cfg, timer=clock) as cache:
        def writer(t):
            for i in range(40):
                cache.set(f"t{t} p{i}", i)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert cache.tiers[0].count() == 240
        assert cache.stats()["tier_errors"]["l3"] == 0


class _Flaky:
    """Wraps a tier; while ``down`` every call fails like a dead server."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.max_ttl_seconds = inner.max_ttl_seconds
        self.down = False

    def __getattr__(self, attr):
        target = getattr(self.inner, attr)
        if not callable(target) or attr in ("stats", "close"):
            return target

        def call(*args, **kwargs):
            if self.down:
                raise BackendUnavailable("connection refused")
            return target(*args, **kwargs)

        return call


def test_background_sweeper_reclaims_expired_rows(clock, sqlite_url):
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url), policy=Policy(sweep_interval_seconds=0.01))
    with SemanticCache(cfg, timer=clock) as cache:
        # observe L3's sweeps: once one that started after the clock moved on is done,
        # the expired row must be gone
        l3 = cache.tiers[-1]
        advanced, swept = threading.Event(), threading.Event()
        sweep = l3.sweep

        def observed_sweep(*args, **kwargs):
            after = advanced.is_set()
            n = sweep(*args, **kwargs)
            if after:
                swept.set()
            return n

        l3.sweep = observed_sweep
        cache.set("short", "v", ttl_seconds=5)
        cache.set("long", "v", ttl_seconds=500)
        clock.advance(10)
        advanced.set()
        assert swept.wait(5), "the background sweeper never ran"
        assert l3.count() == 1  # nobody called sweep(): the background sweeper did
    assert cache._sweeper is not None and not cache._sweeper.is_alive()  # stopped on close
