"""A wrong semantic hit reported on one replica is blocked on every other one: on the
real Redis (pub/sub and, with no L3, the stream) with L3 on the real PostgreSQL or a
shared SQLite file. A replica that hears the event stops at once; one whose listener
hears nothing learns it from the change log at its next poll (``catch_up()``); one
opened after the report is blocked from the start. Waits are on events, or bounded on
a condition the server reports (a subscription), never fixed sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SemanticCache, SQLConfig
from semcache.embedders import HashingEmbedder
from semcache.feedback import load_labels
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._faults import EventTap, MutedListenerClient

pytestmark = pytest.mark.redis

POLICY = Policy(similarity_threshold=0.75, guards=(), verifier=None, log_poll_seconds=None, sweep_interval_seconds=None)
E1 = "how do I reverse a list in python"
Q = "how do I reverse a python list"  # E1 at 0.91 with the hashing embedder
Q2 = "how to reverse a python list"  # E1 at 0.76


@pytest.fixture(params=["postgres", "sqlite"])
def l3_url(request, tmp_path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("pg_schema_url"))
    return f"sqlite:///{tmp_path}/shared.db"


@pytest.fixture
def opened() -> Iterator[list[SemanticCache]]:
    caches: list[SemanticCache] = []
    yield caches
    for c in caches:
        c.close()


def _subscribed(client: Any, channel: str, n: int, timeout: float = 5.0) -> bool:
    """Whether ``n`` listeners are subscribed to ``channel`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) >= n:
            return True
        pause.wait(0.01)
    return False


def _events(tap: EventTap, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``n`` events published (they reach the tap's socket a little later)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while len(got) < n and time.monotonic() < deadline:
        got += tap.drain()
        pause.wait(0.01)
    assert len(got) >= n, got
    return got


def _on_blocks(cache: SemanticCache) -> threading.Event:
    """An event set when ``cache`` takes blocked pairings from an event or the log."""
    arrived = threading.Event()
    replicas = cache._replicas
    assert replicas is not None
    applied = replicas.on_blocks
    assert applied is not None

    def hook(pids: list[str]) -> None:
        applied(pids)
        arrived.set()

    replicas.on_blocks = hook
    return arrived


def test_a_block_reaches_every_replica(l3_url, redis_url, key_prefix, opened):
    cfg = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=redis_url, prefix=key_prefix),
        sql=SQLConfig(url=l3_url),
        policy=POLICY,
    )

    def replica(*, muted: bool = False) -> SemanticCache:
        tiers = None
        if muted:  # its listener subscribes but never hears an event
            client = MutedListenerClient(redis_lib.Redis.from_url(redis_url))
            tiers = [MemoryBackend(), RedisBackend(redis_url, prefix=key_prefix, client=client), SQLBackend(l3_url)]
        c = SemanticCache(cfg, tiers=tiers, embedder=HashingEmbedder(64)).open()
        opened.append(c)
        return c

    a, b, muted = replica(), replica(), replica(muted=True)
    raw = redis_lib.Redis.from_url(redis_url)
    assert _subscribed(raw, f"{key_prefix}events", 2)  # a's and b's listeners
    arrived = _on_blocks(b)
    e1 = a.set(E1, "reversed(xs)")
    for r in (b, muted):
        r.catch_up()  # the vector, from the log
        assert r.get(Q).key == e1.key  # served (and now in its L1)
    done = a.feedback(a.get(Q), False, prompt=Q)
    assert done.blocked and done.durable and done.stored_in == "l3"
    assert arrived.wait(5)  # pub/sub, no poll
    assert b.get(Q) is None and b.get(Q2).key == e1.key
    assert muted.get(Q) is not None  # heard nothing, has not polled
    muted.catch_up()
    assert muted.get(Q) is None and muted.get(Q2).key == e1.key
    late = replica()
    assert late.get(Q) is None and late.get(Q2).key == e1.key  # loaded at open
    assert [(r["prompt"], r["correct"]) for r in load_labels(late)] == [(Q, False)]
    raw.close()


def test_without_l3_the_stream_carries_the_block(redis_url, key_prefix, opened):
    cfg = CacheConfig(memory=MemoryConfig(), redis=RedisConfig(url=redis_url, prefix=key_prefix), sql=None, policy=POLICY)
    listening = redis_lib.Redis.from_url(redis_url)  # kept: a dropped client closes the tap's connection
    tap = EventTap(listening, f"{key_prefix}events")

    def replica(*, muted: bool = False) -> SemanticCache:
        client = redis_lib.Redis.from_url(redis_url)
        tiers = [MemoryBackend(), RedisBackend(redis_url, prefix=key_prefix, client=MutedListenerClient(client) if muted else client)]
        c = SemanticCache(cfg, tiers=tiers, embedder=HashingEmbedder(64)).open()
        opened.append(c)
        return c

    a, muted = replica(), replica(muted=True)
    e1 = a.set(E1, "reversed(xs)")
    adds = _events(tap, 1)
    for msg in adds:  # with no L3, a vector reaches another replica only in the event
        muted.apply_event(msg)
    assert muted.get(Q).key == e1.key
    done = a.feedback(a.get(Q), False, prompt=Q)
    assert done.stored_in == "l2" and done.blocked
    assert muted.get(Q) is not None
    muted.catch_up()  # from the stream
    assert muted.get(Q) is None and muted.get(Q2).key == e1.key
    late = replica(muted=True)
    for msg in adds:
        late.apply_event(msg)
    assert late.get(Q) is None and late.get(Q2).key == e1.key  # loaded from Redis at open
    tap.close()
    listening.close()
