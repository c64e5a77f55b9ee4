"""The consistency contract (docs/CONSISTENCY.md) against ten more ways of breaking it.

Each test states what must hold, not how the core keeps it. Replicas share one
fakeredis server and one SQLite file; faults come from tests/_faults.py; the tiers'
back-off runs on a fake clock (``SemanticCache(monotonic=...)``) and a replica's log
poll is run with ``catch_up()``. Races are made deterministic with pause points or a
hook on the first statement of the racing call, never with sleeps; the one wait on a
real lock is bounded by the tier timeout under test.

(a) a sweep never deletes a write that set an expired key again meanwhile;
(b) a delete waiting in the hand-off is never undone by a read that falls through
    L2's tombstone to L3's older row;
(c) a write waiting in the hand-off that a tag invalidation elsewhere matched never
    comes back when it is drained;
(d) a held write and a later held invalidation replay in their order;
(e) the change log never reuses a sequence number once it was swept empty;
(f) a hand-off drain that fails on Redis does not take L3 out of use;
(g) a statement error in L3 never leaves an older version to be served;
(h) a flush never strips the tags of a newer write that committed during it;
(i) a flush writes a bounded number of Redis keys, however many rows L3 held;
(j) a write blocked by another connection's SQLite write lock returns within about
    the tier timeout.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from sqlalchemy import event

from semcache import CacheConfig, Policy, SemanticCache, SQLConfig
from semcache.errors import BackendError, SemcacheError
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from semcache.types import Entry
from tests._faults import FaultyBackend
from tests._clocks import MonotonicClock as Monotonic

# no background poll or sweep: each test drives them itself; the default back-off,
# on the fake clock
POLICY = Policy(semantic=False, log_poll_seconds=None, sweep_interval_seconds=None)
#: A prompt never stored: looking it up passes through every tier.
NUDGE = "a prompt nobody stored"
#: Calls through every tier (with the back-off clock moved past its window before
#: each) that a tier which is back may need before it is used again.
NUDGES = 3


class Clock:
    """The entries' clock (``SemanticCache(timer=...)``), shared by replicas."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mono() -> Monotonic:
    return Monotonic()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def replicas(server, sqlite_url, key_prefix, mono, clock) -> Iterator[Callable[..., Any]]:
    """``make(l2=True, **l3_kwargs)`` -> (cache, l1, l2 or None, l3): a replica on the
    shared Redis server and SQLite file, its L2 and L3 wrapped in FaultyBackend."""
    made: list[SemanticCache] = []
    faulty: list[FaultyBackend] = []

    def make(*, l2: bool = True, **l3_kwargs: Any) -> tuple[SemanticCache, MemoryBackend, FaultyBackend | None, FaultyBackend]:
        l1 = MemoryBackend()
        t2 = FaultyBackend(RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis(server=server))) if l2 else None
        t3 = FaultyBackend(SQLBackend(sqlite_url, **l3_kwargs))
        tiers: list[Any] = [l1, *([t2] if t2 is not None else []), t3]
        cache = SemanticCache(CacheConfig(embedder=None, policy=POLICY, redis=None), tiers=tiers, timer=clock, monotonic=mono)
        cache.open()
        made.append(cache)
        faulty.extend(t for t in (t2, t3) if t is not None)
        return cache, l1, t2, t3

    yield make
    for t in faulty:
        t.release_all()
        t.up()
    for c in made:
        c.close()


def l3_value(sqlite_url: str, key: str, now: float) -> Any:
    """What L3 serves for ``key`` now, read through a connection of its own."""
    b = SQLBackend(sqlite_url)
    try:
        e = b.get(key, now)
        return None if e is None else e.value
    finally:
        b.close()


def first_statement(engine: Any, matches: Callable[[str], bool], then: Callable[[], None]) -> Callable[[], None]:
    """Run ``then`` once, right after the first statement on ``engine`` that ``matches``
    (while its transaction is still open); return the function that arms the hook."""
    armed = threading.Event()
    fired = threading.Event()

    @event.listens_for(engine, "after_cursor_execute")
    def _hook(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if armed.is_set() and not fired.is_set() and matches(statement):
            fired.set()
            then()

    return armed.set


# -- (a) sweep ---------------------------------------------------------------------


def test_a_sweep_never_deletes_a_fresh_write_of_an_expired_key(replicas, clock, mono, sqlite_url):
    # the writer's L3 waits at most 0.05 s for SQLite's lock: should the sweep hold it,
    # the write is kept in memory and replayed, as any write L3 missed
    writer, w1, _, _ = replicas(l2=False, timeout_seconds=0.05)
    sweeper, _, _, s3 = replicas(l2=False)
    old = writer.set("q", "old", ttl_seconds=10)
    clock.now += 11  # it expired
    fresh: list[Entry] = []
    arm = first_statement(
        s3.inner.engine,
        lambda stmt: "expires_at" in stmt,
        # the other process sets the key again while the sweep is under way
        lambda: fresh.append(writer.set("q", "fresh", ttl_seconds=3600)),
    )
    arm()
    sweeper.sweep()
    assert fresh, "the sweep ran no statement on expiry"
    assert fresh[0].version > old.version
    mono.step()
    writer.catch_up()  # whatever L3 missed of the write is replayed by now
    assert l3_value(sqlite_url, old.key, clock()) == "fresh"
    w1.clear()  # the writer's L1 copy is evicted
    hit = writer.get("q")
    assert hit is not None and hit.value == "fresh"


# -- (b), (c) the hand-off -------------------------------------------------------------


def test_a_delete_in_the_hand_off_is_not_undone_by_a_read_through_the_l2_tombstone(replicas):
    a, _, _, a3 = replicas()
    b, _, _, _ = replicas()
    e = a.set("q", "v1")
    a3.down()  # only a cannot reach L3: its delete is handed off and tombstoned in L2
    assert a.invalidate(key=e.key) == 1
    assert a.get("q") is None
    # b has no copy in L1 and has not polled yet: L2's tombstone is the shared record
    # of the delete, and L3's row is older than it
    assert b.get("q") is None


def test_a_tag_invalidation_elsewhere_kills_a_write_waiting_in_the_hand_off(replicas, sqlite_url, clock):
    a, _, _, a3 = replicas()
    b, _, _, _ = replicas()
    a3.down()
    e = a.set("q", "v1", tags=["t"])
    assert e.durable is True  # in the hand-off
    b.invalidate(tag="t")  # b reaches L3, before any poll of b saw the hand-off
    b.catch_up()  # b's next poll drains the hand-off into L3
    assert l3_value(sqlite_url, e.key, clock()) is None
    assert b.get("q") is None


# -- (d) held in memory ----------------------------------------------------------------


def test_a_held_write_then_a_held_tag_invalidation_replay_in_order(replicas, sqlite_url, clock, mono):
    c, _, _, c3 = replicas(l2=False)  # the embedded default: no hand-off, held in memory
    c3.down()
    e = c.set("q", "v1", tags=["t"])
    assert e.durable is False
    assert c.invalidate(tag="t") == 1
    assert c.get("q") is None
    c3.up()
    mono.step()
    c.catch_up()  # the first L3 call replays what it missed
    assert c.get("q") is None
    assert l3_value(sqlite_url, e.key, clock()) is None


# -- (e) the change log ------------------------------------------------------------------


def test_the_change_log_never_reuses_a_sequence_after_it_was_swept_empty(replicas):
    # a's sweep removes every log row at once (retention below zero): an idle day
    a, _, _, a3 = replicas(l2=False, log_retention_seconds=-1.0)
    b, _, _, _ = replicas(l2=False)
    # more rows than a poll reads again (its overlap), so a reused seq would hide
    a.set_many([{"prompt": f"filler {i}", "value": i} for i in range(80)])
    e = a.set("q", "v1")
    b.catch_up()  # b is at the head of the log
    hit = b.get("q")
    assert hit is not None and hit.value == "v1"  # and holds a copy in its L1
    head = a3.inner.log_head()
    a.sweep()  # the log may now be empty
    a.invalidate(key=e.key)
    assert a3.inner.log_head() > head  # numbered after every row b saw
    b.catch_up()
    assert b.get("q") is None


# -- (f) a drain that fails on Redis --------------------------------------------------


def test_l3_stays_in_use_while_a_hand_off_drain_fails_on_redis(replicas, sqlite_url, clock, mono):
    a, _, a2, a3 = replicas()
    a3.down()
    assert a.set("q1", "v").durable is True  # handed off
    a3.up()
    a2.down()  # L3 is back; Redis, holding the hand-off, is gone
    e = None
    for _ in range(NUDGES):
        mono.step()
        e = a.set("q2", "v")
        if e.durable:
            break
    assert e is not None and e.durable is True  # L3 is healthy: it takes the write
    assert l3_value(sqlite_url, e.key, clock()) == "v"


# -- (g) a statement error -----------------------------------------------------------


def test_a_statement_error_in_l3_never_leaves_an_older_version_served(server, sqlite_url, key_prefix, clock, mono):
    inner = SQLBackend(sqlite_url)
    armed, failed = threading.Event(), threading.Event()

    def set_many_once(entries: Any, now: float) -> Any:
        if armed.is_set() and not failed.is_set():
            failed.set()
            # a deadlock or serialisation failure: the statement lost, the server is fine
            raise BackendError("SQL transaction conflict (40P01)")
        return inner.set_many(entries, now)

    l1 = MemoryBackend()
    l3 = FaultyBackend(inner, set_many=set_many_once)
    with SemanticCache(CacheConfig(embedder=None, policy=POLICY, redis=None), tiers=[l1, l3], timer=clock, monotonic=mono) as c:
        c.set("q", "v1")
        armed.set()
        try:
            e = c.set("q", "v2")
        except SemcacheError:
            return  # refused with an error: the caller knows v2 was not stored
        assert failed.is_set()
        if e.durable is False:
            assert c.stats()["not_durable"] >= 1
        hit = c.get("q")
        assert hit is None or hit.value == "v2"
        l1.clear()  # the L1 copy is evicted
        mono.step()
        for _ in range(NUDGES):
            hit = c.get("q")
            assert hit is None or hit.value == "v2", "an older version than the acknowledged write"
            c.catch_up()
        if e.durable:
            assert l3_value(sqlite_url, e.key, clock()) == "v2"


# -- (h), (i) flush --------------------------------------------------------------------


def test_a_flush_keeps_the_tags_of_a_newer_write_that_committed_during_it(replicas, clock, sqlite_url):
    f, _, _, f3 = replicas(l2=False)
    w, _, _, _ = replicas(l2=False)
    f.set("old", 1)
    # the flush has its version and stops before it reaches L3
    p = f3.pause("invalidate", when="before", thread_name="flusher", predicate=lambda _m, sel, *a, **k: sel.all)
    t = threading.Thread(target=f.flush, name="flusher", daemon=True)
    t.start()
    assert p.wait_reached()
    e = w.set("q", "new", tags=["x"])  # another replica's write, newer than the flush
    p.release()
    t.join(5)
    assert not t.is_alive()
    hit = w.get("q")
    assert hit is None or hit.value == "new"
    assert w.invalidate(tag="x") == 1
    assert w.get("q") is None
    assert l3_value(sqlite_url, e.key, clock()) is None


def test_a_flush_writes_a_bounded_number_of_redis_keys(server, sqlite_url, key_prefix, clock, mono):
    l3 = SQLBackend(sqlite_url)
    now = clock()
    rows = [Entry(key=f"{i:032x}", scope="s", prompt=f"p{i}", payload=b"1", created_at=now, version=i + 1) for i in range(2000)]
    l3.set_many(rows, now)
    r = fakeredis.FakeRedis(server=server)
    l2 = RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis(server=server))
    cfg = CacheConfig(embedder=None, policy=POLICY, redis=None)
    with SemanticCache(cfg, tiers=[MemoryBackend(), l2, l3], timer=clock, monotonic=mono) as c:
        assert c.flush() >= 0
        keys = [k.decode() for k in r.scan_iter(match=f"{key_prefix}*", count=1000)]
        others = [k for k in keys if k != f"{key_prefix}floor"]
        # L2 held none of these rows: the floor covers a flush, one tombstone per row is waste
        assert len(others) < 100, f"{len(others)} Redis keys written by a flush of 2,000 L3 rows"
        assert l3.get(rows[7].key, clock()) is None


# -- (j) SQLite's lock ------------------------------------------------------------------


def test_a_write_blocked_by_sqlites_write_lock_returns_within_the_tier_timeout(tmp_path, clock):
    url = f"sqlite:///{tmp_path}/busy.db"
    cfg = CacheConfig(embedder=None, redis=None, sql=SQLConfig(url=url, timeout_seconds=1), policy=POLICY)
    with SemanticCache(cfg, timer=clock) as c:
        c.set("warm", 1)
        other = sqlite3.connect(f"{tmp_path}/busy.db", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process is in a write transaction
        done = threading.Event()
        outcome: list[Any] = []

        def write() -> None:
            try:
                outcome.append(c.set("q", "v"))
            except SemcacheError as exc:  # a typed error is a fine answer too
                outcome.append(exc)
            finally:
                done.set()

        t0 = time.monotonic()
        threading.Thread(target=write, name="blocked-writer", daemon=True).start()
        try:
            returned = done.wait(3.0)
            elapsed = time.monotonic() - t0
        finally:
            other.execute("ROLLBACK")  # the lock goes whatever happened
            other.close()
        assert done.wait(30.0)
        assert returned, f"set() was still blocked after {elapsed:.1f}s with SQLConfig(timeout_seconds=1)"
        res = outcome[0]
        assert isinstance(res, SemcacheError) or res.durable in (True, False)
