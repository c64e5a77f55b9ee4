"""What a tier missed is kept durably and replayed: the hand-off of L3's misses to L2,
selector invalidations L3 missed, the shared L2 repair mark, and a damaged SQLite
file that must acknowledge nothing. Replicas share one fakeredis server and one
SQLite file; faults come from tests/_faults.py; nothing waits on a sleep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from semcache import CacheConfig, Policy, SemanticCache, Selector, SQLConfig
from semcache.chain import L2_REPAIR
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._faults import FaultyBackend
from tests._clocks import MonotonicClock as Monotonic

# no background poll: each test drives catch-up itself
POLICY = Policy(semantic=False, log_poll_seconds=None, sweep_interval_seconds=None, backoff_initial_seconds=0.001, backoff_max_seconds=0.001)


@pytest.fixture
def mono() -> Monotonic:
    return Monotonic()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def replicas(server, sqlite_url, key_prefix, mono) -> Iterator[Any]:
    made: list[SemanticCache] = []

    def make(*, l2_down: bool = False, l3_down: bool = False) -> tuple[SemanticCache, FaultyBackend, FaultyBackend]:
        l2 = FaultyBackend(RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis(server=server)))
        l3 = FaultyBackend(SQLBackend(sqlite_url))
        cache = SemanticCache(CacheConfig(embedder=None, policy=POLICY, redis=None), tiers=[MemoryBackend(), l2, l3], monotonic=mono)
        cache.open()
        if l2_down:
            l2.down()
        if l3_down:
            l3.down()
        made.append(cache)
        return cache, l2, l3

    yield make
    for c in made:
        c.close()


def _l3_value(l3: FaultyBackend, key: str) -> Any:
    e = l3.inner.get(key, time.time())
    return None if e is None else e.value


def test_a_write_l3_missed_is_handed_off_durably_and_drained_by_any_replica(replicas, mono):
    a, _, a3 = replicas()
    b, _, _ = replicas()
    a3.down()
    e = a.set("q", "v2")
    assert e.durable is True  # L2's hand-off took it
    assert a.stats()["l3_handed_off"] == 1
    assert _l3_value(a3, e.key) is None  # not in L3 yet
    # the writer dies before L3 returns: another replica drains the hand-off
    a.close()
    a3.up()
    mono.step()
    b.catch_up()
    assert _l3_value(a3, e.key) == "v2"
    assert b.stats()["l3_handoff_drained"] == 1
    hit = b.get("q")
    assert hit is not None and hit.value == "v2"


def test_an_older_write_in_the_hand_off_never_replaces_a_newer_one_in_l3(replicas):
    a, _, a3 = replicas()
    b, _, _ = replicas()
    a3.down()
    old = a.set("q", "old")  # handed off
    new = b.set("q", "new")  # b reaches L3 directly, later, with a newer version
    assert new.version > old.version and _l3_value(a3, new.key) == "new"
    b.catch_up()  # drains a's older record
    assert _l3_value(a3, new.key) == "new"


def test_no_durable_tier_means_not_durable_then_replayed_in_order(replicas, mono):
    a, a2, a3 = replicas()
    a2.down()
    a3.down()
    e = a.set("q", "v")
    assert e.durable is False and a.stats()["not_durable"] == 1
    a.invalidate(key=e.key)
    e2 = a.set("q", "v3")
    assert e2.durable is False
    a2.up()
    a3.up()
    mono.step()  # past the back-off: the next call probes
    assert a.get("q").value == "v3"  # from L1
    a.catch_up()  # the poll's first call to L3 replays what it missed, in version order
    assert _l3_value(a3, e.key) == "v3"


def test_a_selector_invalidation_l3_missed_is_handed_off_and_applied(replicas, mono):
    a, _, a3 = replicas()
    b, _, _ = replicas()
    tagged = a.set("t1", "x", tags=["t"])
    kept = a.set("k1", "y")
    a3.down()
    assert a.invalidate(tag="t") >= 1  # L1 and L2 now; L3 later
    assert _l3_value(a3, tagged.key) == "x"
    a.close()  # the process that ran it is gone
    a3.up()
    mono.step()
    b.catch_up()
    assert _l3_value(a3, tagged.key) is None
    assert _l3_value(a3, kept.key) == "y"
    assert b.get("t1") is None


def test_a_write_handed_off_then_invalidated_by_tag_elsewhere_stays_invalidated(replicas, mono):
    a, _, a3 = replicas()
    b, _, _ = replicas()
    a3.down()
    e = a.set("t1", "x", tags=["t"])  # waits in the hand-off
    b.invalidate(tag="t")  # b reaches L3; the record in the hand-off must still die
    b.catch_up()
    assert _l3_value(a3, e.key) is None
    assert b.get("t1") is None
    a3.up()
    mono.step()
    a.catch_up()  # a learns from the log once it can read L3 (no pub/sub configured here)
    assert a.get("t1") is None


def test_a_missed_l2_overwrite_marks_l2_for_repair_and_replicas_repair_it(replicas, server, key_prefix):
    a, a2, a3 = replicas()
    b, b2, _ = replicas()
    e1 = a.set("q", "v1")
    assert b.get("q").value == "v1"  # b's L1 and the shared L2 hold v1
    a2.down()
    e2 = a.set("q", "v2")  # L3 and a's L1 take it; L2 still holds v1
    assert e2.durable is True
    assert a3.inner.mark_get(L2_REPAIR) is not None
    b.catch_up()  # the log drops b's L1 copy; the mark makes b repair L2 from the log
    assert a3.inner.mark_get(L2_REPAIR) is None
    raw = fakeredis.FakeRedis(server=server).get(f"{key_prefix}e:{e1.key}")
    assert raw is None or raw[20:21] == b"T"  # v1 is gone from L2
    assert b.get("q").value == "v2"


def test_the_change_log_carries_what_pub_sub_could_not(replicas):
    a, a2, _ = replicas()
    b, _, _ = replicas()
    e = a.set("q", "v1")
    assert b.get("q").value == "v1"
    a.invalidate(key=e.key)  # no pub/sub configured here: only the log tells b
    b.catch_up()
    assert b.get("q") is None


def _corrupt(path: str) -> None:
    import os

    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(os.urandom(size // 3))


def test_a_damaged_sqlite_file_is_failed_in_health_and_acknowledges_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    cfg = CacheConfig(embedder=None, sql=SQLConfig(url=url), policy=Policy(semantic=False, log_poll_seconds=None))
    with SemanticCache(cfg) as c:
        for i in range(200):
            c.set(f"prompt number {i} " + "x" * 200, "v" * 300)
    import sqlite3

    con = sqlite3.connect(f"{tmp_path}/c.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _corrupt(f"{tmp_path}/c.db")
    with SemanticCache(cfg) as c:
        assert c.health()["l3"].startswith("failed")
        e = c.set("a new prompt", "v")
        assert e.durable is False
        assert c.stats()["tiers"]["l3"]["failed"] is True


def test_raise_mode_still_records_what_a_tier_missed_before_raising(server, sqlite_url, key_prefix, mono):
    from semcache.errors import BackendUnavailable

    pol = Policy(semantic=False, log_poll_seconds=None, sweep_interval_seconds=None, on_backend_error="raise")
    l2 = FaultyBackend(RedisBackend("redis://fake", prefix=key_prefix, client=fakeredis.FakeRedis(server=server)))
    l1 = MemoryBackend()
    with SemanticCache(CacheConfig(embedder=None, policy=pol), tiers=[l1, l2, SQLBackend(sqlite_url)], monotonic=mono) as c:
        e1 = c.set("q", "v1")
        l2.down()
        with pytest.raises(BackendUnavailable):
            c.set("q", "v2")  # L3 and L1 took it; L2 missed it, and the caller is told
        l2.up()
        mono.step()
        l1.delete([e1.key])  # evicted here: the next lookup asks L2
        assert c.get("q").value == "v2"  # L2's old copy was dropped before it served


def test_a_log_row_that_commits_after_a_higher_one_is_still_applied(replicas, sqlite_url):
    """PostgreSQL numbers rows when they are inserted and commits them in any order: a
    follower that read row n+2 before row n+1 committed must still apply n+1."""
    import sqlite3

    a, _, a3 = replicas()
    b, _, _ = replicas()
    e1 = a.set("one", "v1")
    e2 = a.set("two", "w1")
    assert b.get("one").value == "v1" and b.get("two").value == "w1"  # b's L1 holds both
    b.catch_up()
    head = a3.inner.log_head()
    path = sqlite_url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    # row head+2 commits first: a delete of "two" (its L3 row is tombstoned too)
    con.execute("UPDATE semcache_entries SET deleted = 1, version = version + 10 WHERE key = ?", (e2.key,))
    con.execute(
        "INSERT INTO semcache_log (seq, key, version, op, at) VALUES (?, ?, ?, 'd', 0)",
        (head + 2, e2.key, e2.version + 10),
    )
    con.commit()
    b.catch_up()
    assert b.get("two") is None and b.get("one").value == "v1"
    # then row head+1 commits: a delete of "one"
    con.execute("UPDATE semcache_entries SET deleted = 1, version = version + 10 WHERE key = ?", (e1.key,))
    con.execute(
        "INSERT INTO semcache_log (seq, key, version, op, at) VALUES (?, ?, ?, 'd', 0)",
        (head + 1, e1.key, e1.version + 10),
    )
    con.commit()
    con.close()
    b.catch_up()
    assert b.get("one") is None  # the late row was asked for again and applied


def test_a_vector_stored_while_pub_sub_was_down_reaches_the_other_replicas_index(sqlite_url, mono):
    """No event reaches b (no pub/sub here, as with Redis down): the change log carries
    the new entry, and b's index learns its vector from L3 without a rebuild."""
    from semcache.embedders import HashingEmbedder

    pol = Policy(log_poll_seconds=None, sweep_interval_seconds=None, similarity_threshold=0.5, guards=(), verifier=None)
    cfg = CacheConfig(sql=SQLConfig(url=sqlite_url), policy=pol)
    with SemanticCache(cfg, embedder=HashingEmbedder(dim=64), monotonic=mono) as a, SemanticCache(
        cfg, embedder=HashingEmbedder(dim=64), monotonic=mono
    ) as b:
        e = a.set("how do I reverse a list in python", "reversed()")
        assert e.key not in b.index
        b.catch_up()
        assert e.key in b.index
        hit = b.get("how do I reverse a python list")
        assert hit is not None and hit.kind == "semantic" and hit.key == e.key
        a.invalidate(key=e.key)
        b.catch_up()
        assert e.key not in b.index


def test_with_no_l3_a_redis_stream_is_the_change_log_pub_sub_may_lose(server, key_prefix, mono):
    """L1 + L2 only: a replica that missed the live events (here its listener hears
    nothing) catches up from the stream, as replicas with L3 do from its log."""
    from semcache import RedisConfig
    from tests._faults import MutedListenerClient

    pol = Policy(semantic=False, log_poll_seconds=None, sweep_interval_seconds=None)
    cfg = CacheConfig(embedder=None, sql=None, redis=RedisConfig(url="redis://fake", prefix=key_prefix), policy=pol)

    def replica(client: Any) -> SemanticCache:
        return SemanticCache(cfg, tiers=[MemoryBackend(), RedisBackend("redis://fake", prefix=key_prefix, client=client)], monotonic=mono)

    with replica(fakeredis.FakeRedis(server=server)) as a, replica(MutedListenerClient(fakeredis.FakeRedis(server=server))) as b:
        a.set("q", "v1")
        assert b.get("q").value == "v1"  # now in b's L1
        a.set("q", "v2")
        assert b.get("q").value == "v1"  # the event never reached b
        b.catch_up()
        assert b.get("q").value == "v2"
        e = a.set("r", "w")
        assert b.get("r").value == "w"
        a.invalidate(key=e.key)
        a.flush()
        b.catch_up()
        assert b.get("r") is None and b.get("q") is None


def test_a_poll_that_measured_an_empty_hand_off_does_not_hide_one_made_meanwhile(replicas, mono):
    """The poller measures the hand-off empty; before it records that, this process
    hands off a flush L3 missed. L3 must still not be read before the drain (a flush
    leaves no per-key tombstone above L3, only floors)."""
    import threading

    a, a2, a3 = replicas()
    a.set("q", "v1")
    p = a2.pause("handoff_size", when="after", thread_name="poller")
    poller = threading.Thread(target=a.catch_up, name="poller")
    poller.start()
    assert p.wait_reached()  # the poll has measured the hand-off: empty
    a3.down()
    a.flush()  # L3 missed it: handed off; L2 and L1 flushed
    a3.up()
    mono.step()
    p.release()
    poller.join()
    assert a.get("q") is None  # L3 is drained before it is read: never the old row
