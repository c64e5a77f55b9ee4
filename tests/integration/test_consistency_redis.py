"""Consistency regressions (a), (b), (d) of tests/unit/test_consistency_regressions.py
on a real Redis as L2, with SQLite as L3, and real pub/sub between replicas.

(a) an invalidation racing a lookup never lets the lookup copy the removed entry
    back into L1 or L2, deterministically (pause points) and free-running;
(b) an invalidation queued while L3 was down never erases a newer write;
(d) an overwrite made while one replica's L2 was down reaches the other replica.

Entry times come from the fake ``clock``, the tiers' back-off from a settable
monotonic clock (``SemanticCache(monotonic=...)``, where the core takes one; else the
back-off runs in real time and the bounded waits below cover it); waits are bounded
and on events or conditions, never fixed sleeps.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SemanticCache, SQLConfig
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._faults import FaultyBackend
from tests._clocks import MonotonicClock

pytestmark = pytest.mark.redis

PROMPT = "How do I rotate my API key?"
#: A prompt never stored: looking it up passes through every tier.
NUDGE = "a prompt nobody stored"
MISSING = "<missing>"
BACKOFF_MAX = Policy().backoff_max_seconds
#: Whether the core takes the back-off clock (else back-off windows pass in real time).
INJECTED_BACKOFF = "monotonic" in inspect.signature(SemanticCache).parameters
#: How long a tier that is back may take to be used again: no time at all with the
#: back-off clock moved past its window, about a second in real time (contract 5).
RECOVERY = 0.0 if INJECTED_BACKOFF else BACKOFF_MAX + 1.0


def eventually(cond: Callable[[], bool], timeout: float, nudge: Callable[[], Any] | None = None) -> bool:
    """``cond`` within ``timeout`` seconds (for what arrives over the network: pub/sub)."""
    deadline = time.monotonic() + timeout
    wait = threading.Event()
    while True:
        if nudge is not None:
            nudge()
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        wait.wait(0.02)


def value_in(tier: Any, key: str, clock: Callable[[], float]) -> Any:
    inner = tier.inner if isinstance(tier, FaultyBackend) else tier
    e = inner.get(key, clock())
    return MISSING if e is None else e.value


@pytest.fixture
def backoff_clock() -> MonotonicClock:
    return MonotonicClock()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in things:
        if isinstance(t, FaultyBackend):
            t.release_all()
    for t in things:
        if isinstance(t, SemanticCache):
            t.close()


def _three(redis_url: str, key_prefix: str, sqlite_url: str, clock: Any, monotonic: Any = None, **kw: Any) -> tuple[SemanticCache, FaultyBackend, FaultyBackend, FaultyBackend]:
    """L1 + real Redis + SQLite, every tier wrapped."""
    l1 = FaultyBackend(MemoryBackend())
    l2 = FaultyBackend(RedisBackend(redis_url, prefix=key_prefix))
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cfg = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=redis_url, prefix=key_prefix),
        sql=SQLConfig(url=sqlite_url),
        embedder=kw.pop("embedder", None),
        policy=kw.pop("policy", Policy()),
    )
    extra = {"monotonic": monotonic} if monotonic is not None and INJECTED_BACKOFF else {}
    cache = SemanticCache(cfg, timer=clock, tiers=[l1, l2, l3], **extra).open()
    return cache, l1, l2, l3


# -- (a) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["after_its_l3_read", "at_its_copy_upward"])
def test_a_invalidation_racing_a_get_never_resurrects(where, redis_url, key_prefix, sqlite_url, clock, closing):
    cache, l1, l2, l3 = _three(redis_url, key_prefix, sqlite_url, clock)
    closing += [l1, l2, l3, cache]
    e = cache.set(PROMPT, "v1")
    l1.inner.delete([e.key])  # evicted from L1 and L2: the next lookup reads L3 and promotes
    l2.inner.delete([e.key])

    errors: list[BaseException] = []
    read_done = threading.Event()

    def read() -> None:
        try:
            cache.get(PROMPT)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            read_done.set()

    l3_read = l3.pause("get", when="after", thread_name="reader", predicate=lambda m, *a, **k: bool(a) and a[0] == e.key)
    reader = threading.Thread(target=read, name="reader", daemon=True)
    reader.start()
    assert l3_read.wait_reached(5), "the reader never read the entry from L3"
    assert l3_read.result is not None and l3_read.result.value == "v1"
    if where == "at_its_copy_upward":
        # the reader's next call into L1 or L2 after its L3 read is a promotion
        # (whatever the core checked before it): stop it there
        copies = [t.pause(None, when="before", thread_name="reader") for t in (l1, l2)]
        reached = threading.Event()
        for p in copies:
            threading.Thread(target=lambda p=p: p.reached.wait(5) and reached.set(), daemon=True).start()
        threading.Thread(target=lambda: read_done.wait(5) and reached.set(), daemon=True).start()
        l3_read.release()
        assert reached.wait(5)

    removed = threading.Event()
    inv_errors: list[BaseException] = []

    def invalidate() -> None:
        try:
            cache.invalidate(key=e.key)
        except BaseException as exc:  # noqa: BLE001
            inv_errors.append(exc)
        finally:
            removed.set()

    inv = threading.Thread(target=invalidate, name="invalidator", daemon=True)
    inv.start()
    removed.wait(2)  # returns while the reader is stopped (or, serialised, after it)
    for t in (l1, l2, l3):
        t.release_all()
    inv.join(10)
    reader.join(10)
    assert not inv.is_alive() and not reader.is_alive(), "a call never returned"
    assert not errors and not inv_errors, (errors, inv_errors)

    hit = cache.get(PROMPT)
    assert hit is None, f"invalidated value resurrected: {hit.value!r} served from {hit.tier}"
    assert value_in(l1, e.key, clock) == MISSING, "L1 holds a copy of the invalidated entry"
    assert value_in(l2, e.key, clock) == MISSING, "L2 holds a copy of the invalidated entry"


def test_a_invalidation_racing_gets_free_running_never_resurrects(redis_url, key_prefix, sqlite_url, clock):
    rounds = 200
    l1 = MemoryBackend()
    l2 = RedisBackend(redis_url, prefix=key_prefix)
    cfg = CacheConfig(redis=RedisConfig(url=redis_url, prefix=key_prefix), sql=SQLConfig(url=sqlite_url), embedder=None)
    resurrected = 0
    errors: list[BaseException] = []
    with SemanticCache(cfg, timer=clock, tiers=[l1, l2, SQLBackend(sqlite_url)]) as cache:
        key = cache.request(PROMPT).key
        for i in range(rounds):
            cache.set(PROMPT, f"v{i}")
            l1.delete([key])
            l2.delete([key])
            start = threading.Barrier(2)

            def read() -> None:
                try:
                    start.wait(5)
                    cache.get(PROMPT)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            t = threading.Thread(target=read, daemon=True)
            t.start()
            start.wait(5)
            cache.invalidate(key=key)
            t.join(10)
            if cache.get(PROMPT) is not None:
                resurrected += 1
                cache.invalidate(key=key)
    assert not errors, errors[:3]
    assert resurrected == 0, f"{resurrected} of {rounds} rounds served the invalidated value afterwards"


# -- (b) -----------------------------------------------------------------------------------


def test_b_older_queued_invalidation_never_erases_newer_write(redis_url, key_prefix, sqlite_url, clock, backoff_clock, closing):
    cache, l1, l2, l3 = _three(redis_url, key_prefix, sqlite_url, clock, backoff_clock)
    closing += [l1, l2, l3, cache]
    e = cache.set(PROMPT, "old")
    l3.down()
    cache.invalidate(key=e.key)  # L3 misses it: queued for when it is back
    assert cache.get(PROMPT) is None
    l3.up()
    backoff_clock.advance(BACKOFF_MAX)
    before = sum(l3.calls.values())
    cache.set(PROMPT, "new")

    def nudge() -> None:
        cache.get(NUDGE)
        catch_up = getattr(cache, "catch_up", None)
        if catch_up is not None:
            catch_up()  # what the background poll does about once a second

    assert eventually(lambda: sum(l3.calls.values()) > before, RECOVERY, nudge), "L3 was not used again after its back-off"
    nudge()
    assert value_in(l3, e.key, clock) == "new", "L3 lost the newer write (the older queued invalidation erased it)"
    l1.inner.delete([e.key])
    l2.inner.delete([e.key])
    hit = cache.get(PROMPT)
    assert hit is not None and hit.value == "new", f"after L1 and L2 lost their copies: {hit and hit.value!r}"


# -- (d) -----------------------------------------------------------------------------------


def test_d_overwrite_while_l2_down_reaches_the_other_replica(redis_url, key_prefix, sqlite_url, clock, backoff_clock, closing):
    import redis

    a, _, a_l2, _ = _three(redis_url, key_prefix, sqlite_url, clock, backoff_clock)
    b, b_l1, b_l2, _ = _three(redis_url, key_prefix, sqlite_url, clock, backoff_clock)
    closing += [a_l2, b_l2, a, b]
    raw = redis.Redis.from_url(redis_url)
    channel = f"{key_prefix}events"
    # both replicas listen before anything is published
    assert eventually(lambda: dict(raw.pubsub_numsub(channel)).get(channel.encode(), 0) >= 2, 5), "listeners not subscribed"

    e = b.set(PROMPT, "v1")  # B's own write: its L1 copy, no event of its own to wait for
    assert a.get(PROMPT).value == "v1"
    assert value_in(b_l1, e.key, clock) == "v1"

    a_l2.down()
    a.set(PROMPT, "v2")
    assert a.get(PROMPT).value == "v2"
    a_l2.up()
    backoff_clock.advance(BACKOFF_MAX)

    def nudge() -> None:
        a.get(NUDGE)
        catch_up = getattr(b, "catch_up", None)
        if catch_up is not None:
            catch_up()

    def b_fresh() -> bool:
        hit = b.get(PROMPT)
        return hit is not None and hit.value == "v2"

    # A's L2 is back: what A owes the other replicas reaches B (pub/sub or change log)
    ok = eventually(b_fresh, RECOVERY + 2.0, nudge)
    hit = b.get(PROMPT)
    raw.close()
    assert ok, f"replica B still serves {hit and hit.value!r} from {hit and hit.tier} after A's L2 came back"
