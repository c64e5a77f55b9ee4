"""The consistency contract, one regression per known way of breaking it.

Each race is made deterministic with events on a fault-injecting tier
(tests/_faults.py): a call stops at a chosen point, the racing operation runs and
returns, then the call goes on. Time is never waited out: entry times come from the
fake ``clock``, the tiers' back-off from ``backoff_clock``, and a replica's log poll
is run with ``catch_up()``. Waits are bounded and on events, never sleeps. Per key:

(a) an invalidation racing a lookup never lets the lookup copy the removed entry
    back into L1 (promotion never resurrects);
(b) an invalidation queued while L3 was down never erases a newer write;
(c) a write L3 missed while down reaches it within about a second of its return;
(d) an overwrite made while a replica's L2 was down still reaches other replicas;
(e) a write no durable tier took is reported as not durable;
(f) a long outage never makes lookups raise, and the tier is used once it is back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from semcache import CacheConfig, Policy, RedisConfig, SemanticCache, SQLConfig
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._faults import EventTap, FaultyBackend, MutedListenerClient

PROMPT = "How do I rotate my API key?"
#: A prompt never stored: looking it up passes through every tier, so a tier that is
#: usable again is used (and replays what it missed, before it serves).
NUDGE = "a prompt nobody stored"
MISSING = "<no such attribute>"
#: The longest back-off of the default policy: a tier that is back is used again
#: within this long (contract 5). Tests move the back-off clock
#: (``SemanticCache(monotonic=backoff_clock)``) by this much instead of waiting it out.
BACKOFF_MAX = Policy().backoff_max_seconds


#: How many nudges a tier that is back (its back-off passed) may need before it is
#: used again: each nudge is a call that passes through every tier.
NUDGES = 3


def settles(cond: Callable[[], bool], nudge: Callable[[], Any]) -> bool:
    """Whether ``cond`` holds after at most :data:`NUDGES` calls of ``nudge`` (no waiting)."""
    for _ in range(NUDGES):
        nudge()
        if cond():
            return True
    return False


def any_of(*events: threading.Event, timeout: float) -> bool:
    """Wait until one of ``events`` is set (a watcher thread per event; no polling)."""
    one = threading.Event()
    for ev in events:
        threading.Thread(target=lambda ev=ev: ev.wait(timeout) and one.set(), daemon=True).start()
    return one.wait(timeout)


def served_since(tier: FaultyBackend, before: int) -> Callable[[], bool]:
    return lambda: sum(tier.calls.values()) > before


def value_in(tier: Any, key: str, clock: Callable[[], float]) -> Any:
    inner = tier.inner if isinstance(tier, FaultyBackend) else tier
    e = inner.get(key, clock())
    return MISSING if e is None else e.value


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Caches and faulty tiers to clean up: pauses released, caches closed."""
    things: list[Any] = []
    yield things
    for t in things:
        if isinstance(t, FaultyBackend):
            t.release_all()
    for t in things:
        if isinstance(t, SemanticCache):
            t.close()


# -- (a) an invalidation racing a lookup ------------------------------------------------


def _embedded(timer: Callable[[], float], sqlite_url: str, embedder: Any) -> tuple[SemanticCache, FaultyBackend, FaultyBackend]:
    """The embedded default, L1 + SQLite + an index, with both tiers wrapped."""
    l1 = FaultyBackend(MemoryBackend())
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cfg = CacheConfig(embedder=embedder, sql=SQLConfig(url=sqlite_url), policy=Policy(similarity_threshold=0.8, verifier=None))
    return SemanticCache(cfg, timer=timer, tiers=[l1, l3]).open(), l1, l3


@pytest.mark.parametrize("where", ["after_its_l3_read", "at_its_copy_into_l1"])
def test_a_invalidation_racing_a_get_never_resurrects(where, clock, sqlite_url, hashing_embedder, closing):
    cache, l1, l3 = _embedded(clock, sqlite_url, hashing_embedder)
    closing += [l1, l3, cache]
    e = cache.set(PROMPT, "v1")
    l1.inner.delete([e.key])  # evicted from L1: the next lookup reads L3 and promotes

    got: list[Any] = []
    errors: list[BaseException] = []
    read_done = threading.Event()

    def read() -> None:
        try:
            got.append(cache.get(PROMPT))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            read_done.set()

    l3_read = l3.pause("get", when="after", thread_name="reader", predicate=lambda m, *a, **k: bool(a) and a[0] == e.key)
    reader = threading.Thread(target=read, name="reader", daemon=True)
    reader.start()
    assert l3_read.wait_reached(5), "the reader never read the entry from L3"
    assert l3_read.result is not None and l3_read.result.value == "v1"
    if where == "at_its_copy_into_l1":
        # the reader's next call into L1 after its L3 read is the promotion (whatever
        # the core checked before it): stop it there
        copy = l1.pause(None, when="before", thread_name="reader")
        l3_read.release()
        assert any_of(copy.reached, read_done, timeout=5)

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
    # the invalidation returns while the reader is stopped; a core that makes it wait
    # for the lookup instead is allowed (then it returns once the reader goes on)
    removed.wait(2)
    l1.release_all()
    l3.release_all()
    inv.join(10)
    reader.join(10)
    assert not inv.is_alive() and not reader.is_alive(), "a call never returned"
    assert not errors and not inv_errors, (errors, inv_errors)

    hit = cache.get(PROMPT)
    assert hit is None, f"invalidated value resurrected: {hit.value!r} served from {hit.tier}"
    assert value_in(l1, e.key, clock) == MISSING, "L1 holds a copy of the invalidated entry"


def test_a_invalidation_racing_gets_free_running_never_resurrects(clock, sqlite_url, hashing_embedder):
    """The same race with free-running threads, many rounds: no round may resurrect."""
    rounds = 200
    l1 = MemoryBackend()
    cfg = CacheConfig(embedder=hashing_embedder, sql=SQLConfig(url=sqlite_url), policy=Policy(similarity_threshold=0.8, verifier=None))
    resurrected = 0
    errors: list[BaseException] = []
    with SemanticCache(cfg, timer=clock, tiers=[l1, SQLBackend(sqlite_url)]) as cache:
        key = cache.request(PROMPT).key
        for i in range(rounds):
            cache.set(PROMPT, f"v{i}")
            l1.delete([key])
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


# -- (b) an older queued delete never erases a newer write ----------------------------------


def test_b_older_queued_invalidation_never_erases_newer_write(clock, sqlite_url, closing, backoff_clock):
    l1 = MemoryBackend()
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cache = SemanticCache(CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url)), timer=clock, monotonic=backoff_clock, tiers=[l1, l3]).open()
    closing += [l3, cache]
    e = cache.set(PROMPT, "old")
    l3.down()
    cache.invalidate(key=e.key)  # L3 misses it: queued for when it is back
    assert cache.get(PROMPT) is None
    l3.up()
    backoff_clock.advance(BACKOFF_MAX)  # the back-off window has passed
    before = sum(l3.calls.values())
    cache.set(PROMPT, "new")
    # once L3 serves again, everything it missed has been replayed (contract 4)
    assert settles(served_since(l3, before), nudge=lambda: cache.get(NUDGE)), "L3 was not used again after its back-off"
    assert value_in(l3, e.key, clock) == "new", "L3 lost the newer write (the older queued invalidation erased it)"
    l1.delete([e.key])
    hit = cache.get(PROMPT)
    assert hit is not None and hit.value == "new", f"after L1 eviction: {hit and hit.value!r}"


# -- (c) a write L3 missed while down reaches it within about a second ---------------------


def test_c_write_missed_while_l3_down_reaches_l3_within_about_a_second(clock, sqlite_url, closing, backoff_clock):
    l1 = MemoryBackend()
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cache = SemanticCache(CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url)), timer=clock, monotonic=backoff_clock, tiers=[l1, l3]).open()
    closing += [l3, cache]
    l3.down()
    e = cache.set(PROMPT, "v")  # returns: L1 took it, L3 missed it
    assert cache.get(PROMPT).value == "v"
    for _ in range(6):  # a long outage: L3 is probed and fails again, many times
        clock.advance(60)
        backoff_clock.advance(60)
        cache.get(NUDGE)
    l3.up()
    backoff_clock.advance(BACKOFF_MAX)  # about a second after L3 is back
    ok = settles(lambda: value_in(l3, e.key, clock) == "v", nudge=lambda: cache.get(NUDGE))
    assert ok, (
        f"the write L3 missed was not in L3 {BACKOFF_MAX}s after L3 was back "
        f"(L3 holds {value_in(l3, e.key, clock)!r}; L3 calls since: {dict(l3.calls)})"
    )


# -- (d) an overwrite made while one replica's L2 was down reaches the others ---------------


def _replica(server: Any, prefix: str, sqlite_url: str, clock: Callable[[], float], monotonic: Callable[[], float]) -> tuple[SemanticCache, FaultyBackend]:
    raw = fakeredis.FakeRedis(server=server)
    l2 = FaultyBackend(RedisBackend("redis://fake", prefix=prefix, client=raw), client=MutedListenerClient(raw))
    cfg = CacheConfig(embedder=None, redis=RedisConfig(url="redis://fake", prefix=prefix), sql=SQLConfig(url=sqlite_url))
    return SemanticCache(cfg, timer=clock, monotonic=monotonic, tiers=[MemoryBackend(), l2, SQLBackend(sqlite_url)]).open(), l2


def test_d_overwrite_while_l2_down_reaches_the_other_replica(clock, sqlite_url, key_prefix, closing, backoff_clock):
    server = fakeredis.FakeServer()
    tap = EventTap(fakeredis.FakeRedis(server=server), f"{key_prefix}events")
    a, a_l2 = _replica(server, key_prefix, sqlite_url, clock, backoff_clock)
    b, b_l2 = _replica(server, key_prefix, sqlite_url, clock, backoff_clock)
    closing += [a_l2, b_l2, a, b]

    def deliver() -> None:
        for msg in tap.drain():
            b.apply_event(msg)

    e = a.set(PROMPT, "v1")
    deliver()
    assert b.get(PROMPT).value == "v1" and a.get(PROMPT).value == "v1"
    b_l1 = b.tiers[0]
    assert value_in(b_l1, e.key, clock) == "v1" and value_in(a.tiers[0], e.key, clock) == "v1"

    a_l2.down()
    a.set(PROMPT, "v2")
    assert a.get(PROMPT).value == "v2"
    a_l2.up()
    backoff_clock.advance(BACKOFF_MAX)  # the back-off window has passed

    def b_fresh() -> bool:
        deliver()
        hit = b.get(PROMPT)
        return hit is not None and hit.value != "v1"

    def nudge() -> None:
        a.get(NUDGE)
        b.catch_up()  # what B's log poll does every second, now rather than within a second

    # A's L2 is back: whatever A owes it (and the other replicas) is sent; B hears it,
    # by an event or from the change log
    ok = settles(b_fresh, nudge=nudge)
    deliver()
    hit = b.get(PROMPT)
    assert ok and hit is not None and hit.value == "v2", (
        f"replica B still serves {hit and hit.value!r} from {hit and hit.tier} after A's L2 came back"
    )
    tap.close()


# -- (e) durability is reported ----------------------------------------------------------


def test_e_set_reports_whether_a_durable_tier_took_it(clock, sqlite_url, closing):
    l1 = MemoryBackend()
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cache = SemanticCache(CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url)), timer=clock, tiers=[l1, l3]).open()
    closing += [l3, cache]
    ok = cache.set(PROMPT, "v1")
    assert getattr(ok, "durable", MISSING) is True, f"a write L3 took: durable={getattr(ok, 'durable', MISSING)!r}"
    l3.down()
    lost = cache.set("Another prompt", "v2")
    assert getattr(lost, "durable", MISSING) is False, (
        f"a write only L1 took (L3 down, no L2): durable={getattr(lost, 'durable', MISSING)!r}"
    )


# -- (f) a long outage never turns into errors for callers ---------------------------------


def test_f_long_outage_never_makes_lookups_raise_and_the_tier_is_used_again(clock, sqlite_url, closing, backoff_clock):
    """Each failed probe doubles the back-off (up to its cap): the doubling must not
    overflow after ~1,000 probes, i.e. an outage of about 18 minutes."""
    l1 = MemoryBackend()
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url=sqlite_url))
    cache = SemanticCache(cfg, timer=clock, monotonic=backoff_clock, tiers=[l1, l3]).open()
    closing += [l3, cache]
    e = cache.set(PROMPT, "v")
    l3.down()
    for _ in range(1100):
        clock.advance(BACKOFF_MAX)
        backoff_clock.advance(BACKOFF_MAX)
        cache.get(NUDGE)  # never raises: a down tier is a miss
    probes = sum(l3.failed.values())
    l3.up()
    backoff_clock.advance(BACKOFF_MAX)
    before = sum(l3.calls.values())
    assert settles(served_since(l3, before), nudge=lambda: cache.get(NUDGE)), f"L3 unused after {probes} failed probes"
    l1.delete([e.key])
    assert cache.get(PROMPT).value == "v"
