"""Feedback on hits: a wrong semantic hit blocks its (request, entry) pairing here and in
every replica, a wrong exact hit invalidates its entry, every report is a label that
load_labels returns, stats and metrics count them, bad input is refused before anything
is stored, and an outage never fails the report. SQLite files, one fakeredis server, the
hashing embedder; replicas are synchronised with catch_up() and events, never sleeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from semcache import (
    AsyncSemanticCache,
    CacheConfig,
    InvalidInputError,
    MemoryConfig,
    Policy,
    RedisConfig,
    SemanticCache,
    SQLConfig,
    UnknownEntryError,
)
from semcache.embedders import HashingEmbedder
from semcache.feedback import load_labels
from semcache.stats import wilson_upper
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._clocks import MonotonicClock
from tests._faults import EventTap, FaultyBackend, MutedListenerClient

#: The cosine path alone decides (the pair verifier, where there is one, is off).
NO_VERIFIER: dict[str, Any] = {"verifier": None} if "verifier" in {f.name for f in dataclasses.fields(Policy)} else {}
POLICY = Policy(
    similarity_threshold=0.75,
    guards=(),
    log_poll_seconds=None,
    sweep_interval_seconds=None,
    backoff_initial_seconds=0.001,
    backoff_max_seconds=0.001,
    **NO_VERIFIER,
)

E1 = "how do I reverse a list in python"
E2 = "how can I reverse a list in python"
#: Nearest E1 (0.91 with the hashing embedder), then E2 (0.81).
Q = "how do I reverse a python list"
#: Another paraphrase: E1 (0.76) only.
Q2 = "how to reverse a python list"


@pytest.fixture
def mono() -> MonotonicClock:
    return MonotonicClock()


@pytest.fixture
def caches(clock, mono) -> Iterator[Any]:
    made: list[SemanticCache] = []

    def make(config: CacheConfig | None = None, **kw: Any) -> SemanticCache:
        c = SemanticCache(config, timer=clock, monotonic=mono, embedder=HashingEmbedder(64), **kw).open()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def sqlite_config(url: str, **kw: Any) -> CacheConfig:
    return CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=url), policy=POLICY, **kw)


def test_a_wrong_semantic_hit_is_never_served_to_that_prompt_again(caches, sqlite_url):
    cache = caches(sqlite_config(sqlite_url))
    e1 = cache.set(E1, "reversed(xs)")
    hit = cache.get(Q)
    assert hit is not None and hit.kind == "semantic" and hit.key == e1.key
    done = cache.feedback(hit, False, prompt=Q)
    assert done.blocked and done.kind == "semantic" and done.verdict == "wrong" and not done.invalidated
    assert done.stored_in == "l3" and done.durable and done.request_key == cache.request(Q).key
    assert cache.get(Q) is None  # the only candidate is blocked: a miss
    assert cache.get("  " + Q + "\n") is None  # the same prompt, normalised
    again = cache.get(Q2)  # another prompt still gets the entry
    assert again is not None and again.key == e1.key
    assert cache.get(E1).kind == "exact"  # and the entry itself is untouched
    assert cache.get(Q, model="another model") is None  # (another scope never had it)
    assert cache.stats()["feedback"]["blocked_candidates"] >= 1


def test_a_blocked_prompt_gets_the_next_candidate(caches, sqlite_url):
    cache = caches(sqlite_config(sqlite_url))
    e1, e2 = cache.set(E1, "one"), cache.set(E2, "two")
    first = cache.get(Q)
    assert first.key == e1.key
    cache.feedback(first, False, prompt=Q)
    second = cache.get(Q)
    assert second is not None and second.kind == "semantic" and second.key == e2.key
    cache.feedback(second, False, prompt=Q)
    assert cache.get(Q) is None
    assert cache.get(Q2).key == e1.key


def test_a_wrong_exact_hit_invalidates_the_entry(caches, sqlite_url):
    cache = caches(sqlite_config(sqlite_url))
    e1 = cache.set(E1, "a wrong answer")
    hit = cache.get(E1)
    assert hit.kind == "exact"
    done = cache.feedback(hit, False)  # an exact hit carries its prompt
    assert done.kind == "exact" and done.invalidated == 1 and not done.blocked
    assert cache.get(E1) is None and cache.get(Q) is None  # gone from every tier and the index
    assert e1.key not in cache.index
    fresh = cache.set(E1, "the right answer")  # a new answer under the same prompt is served
    assert cache.get(E1).value == "the right answer" and cache.get(Q).key == fresh.key


def test_a_correct_report_is_only_a_label(caches, sqlite_url):
    cache = caches(sqlite_config(sqlite_url))
    e1 = cache.set(E1, "reversed(xs)")
    done = cache.feedback(cache.get(Q), True, prompt=Q, source="llm")
    assert done.verdict == "correct" and not done.blocked and not done.invalidated
    assert cache.get(Q).key == e1.key and cache.get(E1).kind == "exact"


def test_labels_are_stored_and_read_back(caches, sqlite_url, clock):
    cache = caches(sqlite_config(sqlite_url))
    e1 = cache.set(E1, "reversed(xs)", namespace="acme")
    hit = cache.get(Q, namespace="acme")
    cache.feedback(hit, False, prompt=Q)
    clock.advance(1)
    cache.feedback(cache.get(Q2, namespace="acme"), True, prompt=Q2, source="llm")
    clock.advance(1)
    cache.feedback(cache.get(E1, namespace="acme"), True)  # an exact hit
    rows = load_labels(cache)
    assert rows == [
        {
            "prompt": Q,
            "cached_prompt": E1,
            "correct": False,
            "namespace": "acme",
            "entry_id": e1.key,
            "similarity": pytest.approx(hit.similarity),
            "verifier_score": getattr(hit, "verifier_score", None),
            "source": "user",
            "created_at": clock.now - 2,
        },
        {
            "prompt": Q2,
            "cached_prompt": E1,
            "correct": True,
            "namespace": "acme",
            "entry_id": e1.key,
            "similarity": pytest.approx(0.764, abs=0.01),
            "verifier_score": None,
            "source": "llm",
            "created_at": clock.now - 1,
        },
    ]
    assert [r["prompt"] for r in load_labels(cache, kind=None)] == [Q, Q2, E1]
    assert [r["prompt"] for r in load_labels(cache, kind="exact")] == [E1]
    assert load_labels(cache, namespace="other") == []
    assert [r["prompt"] for r in load_labels(cache, kind=None, limit=2)] == [Q2, E1]
    # kept in L3 itself: another process reads the same labels
    with SemanticCache(sqlite_config(sqlite_url, embedder=None)) as other:
        assert [r["prompt"] for r in load_labels(other, kind=None)] == [Q, Q2, E1]
    with pytest.raises(InvalidInputError):
        load_labels(cache, kind="fuzzy")
    with pytest.raises(InvalidInputError):
        load_labels(cache, limit=0)
    with pytest.raises(InvalidInputError):
        load_labels(object())


def test_a_report_by_entry_id_rebuilds_the_request_key(caches, sqlite_url):
    cache = caches(sqlite_config(sqlite_url))
    e1 = cache.set(E1, "reversed(xs)", model="m", params={"temperature": 0})
    assert cache.get(Q, model="m", params={"temperature": 0}).key == e1.key
    with pytest.raises(InvalidInputError, match="another scope"):  # the lookup had params
        cache.feedback(entry_id=e1.key, prompt=Q, model="m")
    done = cache.feedback(entry_id=e1.key, prompt=Q, model="m", params={"temperature": 0})
    assert done.blocked and done.similarity == pytest.approx(0.909, abs=0.01)
    assert cache.get(Q, model="m", params={"temperature": 0}) is None
    assert cache.get(Q2, model="m", params={"temperature": 0}).key == e1.key
    # chat messages: the last user turn is the prompt, the rest is scope
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": E1}]
    e2 = cache.set(None, "reversed(xs)", messages=msgs, model="m")
    asked = [msgs[0], {"role": "user", "content": Q}]
    hit = cache.get(messages=asked, model="m")
    assert hit.key == e2.key
    assert cache.feedback(hit, False, messages=asked, model="m").blocked
    assert cache.get(messages=asked, model="m") is None
    with pytest.raises(UnknownEntryError):
        cache.feedback(entry_id="0" * 32, prompt=Q)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, h: c.feedback({"key": h.key}, False, prompt=Q),  # not a Hit
        lambda c, h: c.feedback(h, False, prompt=Q, entry_id=h.key),  # both
        lambda c, h: c.feedback(None, False, prompt=Q),  # neither
        lambda c, h: c.feedback(h, False),  # a semantic hit without the request's prompt
        lambda c, h: c.feedback(h, False, prompt="   "),  # empty
        lambda c, h: c.feedback(h, False, prompt="how do I\x00 reverse"),  # NUL
        lambda c, h: c.feedback(h, False, prompt="\ud800 reverse"),  # a lone surrogate
        lambda c, h: c.feedback(h, False, prompt=E1),  # the cached prompt, not the request's
        lambda c, h: c.feedback(h, False, prompt=Q, model="m2"),  # another scope than the hit's
        lambda c, h: c.feedback(h, "no", prompt=Q),  # not a bool
        lambda c, h: c.feedback(h, False, prompt=Q, source="robot"),
        lambda c, h: c.feedback(h, False, prompt=Q, messages=[{"role": "user", "content": Q}]),
        lambda c, h: c.feedback(entry_id=h.key),  # no request
        lambda c, h: c.feedback(entry_id="", prompt=Q),
        lambda c, h: c.feedback(entry_id="x\x00", prompt=Q),
        lambda c, h: c.feedback(entry_id=h.key, prompt=""),
        lambda c, h: c.feedback(entry_id="0" * 32, prompt=Q),  # no such entry
        lambda c, h: c.feedback(c.get(E1), False, prompt=Q),  # an exact hit answered E1, not Q
    ],
)
def test_bad_input_is_refused_and_records_nothing(caches, sqlite_url, call):
    cache = caches(sqlite_config(sqlite_url))
    cache.set(E1, "reversed(xs)")
    hit = cache.get(Q)
    with pytest.raises(InvalidInputError):
        call(cache, hit)
    fb = cache.stats()["feedback"]
    assert fb["wrong"] == fb["correct"] == 0 and fb["blocked_pairs"] == 0
    assert load_labels(cache, kind=None) == []
    assert cache.get(Q).key == hit.key and cache.get(E1).kind == "exact"


def test_stats_and_metrics_count_reports(caches, sqlite_url):
    from semcache.contrib.prometheus import CacheMetrics

    cache = caches(sqlite_config(sqlite_url))
    cache.set(E1, "one")
    cache.set(E2, "two")
    cache.feedback(cache.get(Q), False, prompt=Q)  # semantic, wrong
    cache.feedback(cache.get(Q2), True, prompt=Q2)  # semantic, correct
    cache.feedback(cache.get(Q), True, prompt=Q)  # semantic (the next candidate), correct
    cache.feedback(cache.get(E1), False)  # exact, wrong
    fb = cache.stats()["feedback"]
    assert fb["wrong"] == 2 and fb["correct"] == 2
    assert fb["semantic_hits_reported"] == 3 and fb["semantic_wrong"] == 1
    assert fb["estimated_false_hit_rate"] == pytest.approx(1 / 3)
    assert fb["false_hit_rate_upper_95"] == pytest.approx(wilson_upper(1, 3)) and 1 / 3 < fb["false_hit_rate_upper_95"] < 1
    assert fb["blocked_pairs"] == 1
    text = CacheMetrics(cache).render().decode()
    assert 'semcache_feedback_total{verdict="wrong"} 2.0' in text
    assert 'semcache_feedback_total{verdict="correct"} 2.0' in text
    assert "semcache_feedback_blocked_pairs 1.0" in text


def test_wilson_upper_bound():
    assert wilson_upper(0, 0) is None
    assert 0 < wilson_upper(0, 10) < 0.35  # no wrong report in 10: still up to about 28%
    assert wilson_upper(5, 10) == pytest.approx(0.7634, abs=1e-3)
    assert wilson_upper(10, 10) == pytest.approx(1.0)


# -- replicas ----------------------------------------------------------------------------
def test_replicas_on_one_sqlite_file_follow_the_block_through_the_log(caches, sqlite_url):
    cfg = sqlite_config(sqlite_url)
    a, b = caches(cfg), caches(cfg)
    e1 = a.set(E1, "reversed(xs)")
    b.catch_up()
    assert b.get(Q).key == e1.key  # b serves the pairing (and holds the entry in L1)
    a.feedback(a.get(Q), False, prompt=Q)
    assert b.get(Q) is not None  # no pub/sub between them: b has not read the log yet
    b.catch_up()  # what b's poll does every second
    assert b.get(Q) is None and b.get(Q2).key == e1.key
    late = caches(cfg)  # opened after the report: blocked from the start
    assert late.get(Q) is None and late.get(Q2).key == e1.key


def test_without_l3_redis_keeps_the_blocks_and_replicas_learn_them_from_events_or_the_stream(caches, key_prefix):
    """L1 + L2 only: Redis keeps the labels and the blocked pairings. The events are
    delivered by hand (the listeners hear nothing): one replica gets the block event,
    one gets none and catches up from the stream, and one opened later loads the
    pairings from Redis."""
    server = fakeredis.FakeServer()
    cfg = CacheConfig(sql=None, redis=RedisConfig(url="redis://fake", prefix=key_prefix), policy=POLICY)
    tap = EventTap(fakeredis.FakeRedis(server=server), f"{key_prefix}events")

    def replica() -> SemanticCache:
        client = MutedListenerClient(fakeredis.FakeRedis(server=server))
        return caches(cfg, tiers=[MemoryBackend(), RedisBackend("redis://fake", prefix=key_prefix, client=client)])

    a, b, c = replica(), replica(), replica()
    e1 = a.set(E1, "reversed(xs)")
    adds = tap.drain()
    for msg in adds:  # with no L3, vectors reach other replicas only in events
        b.apply_event(msg)
        c.apply_event(msg)
    assert b.get(Q).key == e1.key and c.get(Q).key == e1.key
    done = a.feedback(a.get(Q), False, prompt=Q)
    assert done.stored_in == "l2" and not done.durable  # no L3: Redis keeps it
    events = tap.drain()
    assert [m["op"] for m in events] == ["block"]
    b.apply_event(events[0])
    assert b.get(Q) is None and b.get(Q2).key == e1.key  # the event
    assert c.get(Q) is not None  # heard nothing yet
    c.catch_up()
    assert c.get(Q) is None and c.get(Q2).key == e1.key  # the stream
    late = replica()
    for msg in adds:
        late.apply_event(msg)
    assert late.get(Q) is None and late.get(Q2).key == e1.key  # loaded from Redis at open
    assert [r["prompt"] for r in load_labels(late)] == [Q]
    tap.close()


def test_l1_only_keeps_labels_and_blocks_in_memory(caches):
    cache = caches(CacheConfig(memory=MemoryConfig(), sql=None, policy=POLICY))
    e1 = cache.set(E1, "reversed(xs)")
    done = cache.feedback(cache.get(Q), False, prompt=Q)
    assert done.stored_in == "memory" and not done.durable and done.blocked
    assert cache.get(Q) is None and cache.get(Q2).key == e1.key
    assert [r["prompt"] for r in load_labels(cache)] == [Q]


# -- outages -------------------------------------------------------------------------------
def test_l3_down_the_block_applies_at_once_and_the_label_is_stored_when_l3_is_back(caches, sqlite_url, mono, clock):
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cache = caches(sqlite_config(sqlite_url), tiers=[MemoryBackend(), l3])
    e1 = cache.set(E1, "reversed(xs)")
    hit = cache.get(Q)
    l3.down()
    done = cache.feedback(hit, False, prompt=Q)  # never fails the caller
    assert done.blocked and done.stored_in == "process" and not done.durable
    assert cache.stats()["feedback"]["labels_held_in_process"] == 1
    assert cache.get(Q) is None  # blocked here at once
    with SemanticCache(sqlite_config(sqlite_url, embedder=None)) as other:
        assert load_labels(other) == []  # not in L3 yet (only in this process)
    l3.up()
    mono.step()
    cache.catch_up()  # the poll stores what was held
    with SemanticCache(sqlite_config(sqlite_url), timer=clock, embedder=HashingEmbedder(64)) as other:
        assert [r["prompt"] for r in load_labels(other)] == [Q]
        assert other.get(Q) is None and other.get(Q2).key == e1.key  # and it blocks there too


def test_l3_down_the_label_waits_in_redis_and_reaches_every_replica_through_l3(caches, sqlite_url, key_prefix, mono):
    """L3 down, Redis up: the label goes to L2's hand-off (durable); a replica that
    hears no event learns the block once a replica drained the label into L3."""
    server = fakeredis.FakeServer()
    cfg = sqlite_config(sqlite_url, redis=RedisConfig(url="redis://fake", prefix=key_prefix))

    def replica(client: Any) -> tuple[SemanticCache, FaultyBackend]:
        l3 = FaultyBackend(SQLBackend(sqlite_url))
        l2 = RedisBackend("redis://fake", prefix=key_prefix, client=client)
        return caches(cfg, tiers=[MemoryBackend(), l2, l3]), l3

    a, a3 = replica(fakeredis.FakeRedis(server=server))
    b, _ = replica(MutedListenerClient(fakeredis.FakeRedis(server=server)))
    e1 = a.set(E1, "reversed(xs)")
    b.catch_up()
    assert b.get(Q).key == e1.key
    hit = a.get(Q)
    a3.down()
    done = a.feedback(hit, False, prompt=Q)
    assert done.stored_in == "handoff" and done.durable and a.get(Q) is None
    assert [r["prompt"] for r in load_labels(b)] == [Q]  # read back while it waits in Redis
    b.catch_up()  # b drains the hand-off into L3 (its own L3 is up), and follows the log
    b.catch_up()
    assert b.get(Q) is None and b.get(Q2).key == e1.key
    a3.up()
    mono.step()
    a.catch_up()
    assert [r["prompt"] for r in load_labels(a)] == [Q]  # stored once


def test_on_backend_error_raise_raises_after_the_label_was_kept(caches, sqlite_url, mono):
    l3 = FaultyBackend(SQLBackend(sqlite_url))
    cfg = sqlite_config(sqlite_url)
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, on_backend_error="raise"))
    cache = caches(cfg, tiers=[MemoryBackend(), l3])
    cache.set(E1, "reversed(xs)")
    hit = cache.get(Q)
    l3.down()
    from semcache import BackendUnavailable

    with pytest.raises(BackendUnavailable):
        cache.feedback(hit, False, prompt=Q)
    assert cache.get(Q) is None  # the block applied, and the label is held
    l3.up()
    mono.step()
    cache.catch_up()
    assert [r["prompt"] for r in load_labels(cache)] == [Q]


async def test_the_async_facade(sqlite_url, clock):
    async with AsyncSemanticCache(sqlite_config(sqlite_url), timer=clock, embedder=HashingEmbedder(64)) as cache:
        e1 = await cache.set(E1, "reversed(xs)")
        hit = await cache.get(Q)
        done = await cache.feedback(hit, False, prompt=Q)
        assert done.blocked and await cache.get(Q) is None
        assert (await cache.get(Q2)).key == e1.key
        assert [r["prompt"] for r in load_labels(cache)] == [Q]
