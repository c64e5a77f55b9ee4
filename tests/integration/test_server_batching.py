"""Micro-batching: concurrent lookups share one embedding call, exact L1 hits never wait for a
window, and embedding never blocks the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from semcache import AsyncSemanticCache, CacheConfig, MemoryConfig, Policy, SQLConfig
from semcache.embedders import HashingEmbedder
from semcache.server.app import create_app
from semcache.server.batching import MicroBatcher
from tests._sidecar import TENANT_A, auth, in_process, server_config


class RecordingEmbedder(HashingEmbedder):
    """The hashing embedder, recording batch sizes (and optionally slow, like a real model)."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        super().__init__(64)
        self.batches: list[int] = []
        self.delay_seconds = delay_seconds
        self.threads: set[str] = set()

    def embed(self, texts):
        self.batches.append(len(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return super().embed(texts)


@pytest.fixture
async def cache(tmp_path):
    emb = RecordingEmbedder()
    c = AsyncSemanticCache(
        CacheConfig(
            memory=MemoryConfig(),
            sql=SQLConfig(url=f"sqlite:///{tmp_path}/b.db"),
            embedder=emb,
            policy=Policy(similarity_threshold=0.8, verifier=None),
        )
    )
    await c.open()
    await c.set_many([{"prompt": f"stored question number {i}", "value": i} for i in range(10)])
    emb.batches.clear()
    yield c
    await c.aclose()


async def test_concurrent_lookups_share_one_embedding_call(cache):
    sizes: list[int] = []
    b = MicroBatcher(cache, window_seconds=0.05, max_batch=32, on_batch=sizes.append)
    reqs = [
        cache.request(f"Stored question number {i}") for i in range(10)
    ]  # not exact: case differs
    reqs += [cache.request(f"an unrelated prompt {i} about gardening") for i in range(10)]
    results = await asyncio.gather(*(b.lookup(r) for r in reqs))
    assert sizes == [20] and cache.embedder.batches == [20]
    for i, res in enumerate(results[:10]):
        assert res.hit is not None and res.hit.kind == "semantic" and res.hit.value == i
        assert res.embedding is not None and res.embedding.shape == (64,)
    assert all(res.hit is None for res in results[10:])
    await b.aclose()


async def test_batches_respect_the_maximum(cache):
    b = MicroBatcher(cache, window_seconds=0.05, max_batch=4, concurrency=1)
    await asyncio.gather(*(b.lookup(cache.request(f"prompt {i} of many")) for i in range(10)))
    assert max(cache.embedder.batches) <= 4 and sum(cache.embedder.batches) == 10
    await b.aclose()


async def test_exact_l1_hit_does_not_wait_for_the_window(cache):
    b = MicroBatcher(cache, window_seconds=2.0)
    t0 = time.perf_counter()
    res = await b.lookup(cache.request("stored question number 3"))
    assert time.perf_counter() - t0 < 0.5
    assert res.hit is not None and res.hit.kind == "exact" and res.hit.tier == "l1"
    assert cache.embedder.batches == []  # an exact hit pays for no embedding
    await b.aclose()


async def test_exact_hits_below_l1_pay_for_no_embedding(cache):
    sizes: list[int] = []
    b = MicroBatcher(cache, window_seconds=0.02, on_batch=sizes.append)
    reqs = [cache.request(f"stored question number {i}") for i in range(4)]
    l1 = cache.tiers[0]
    l1.delete([r.key for r in reqs])  # evicted: the exact answers are in L3 only
    results = await asyncio.gather(*(b.lookup(r) for r in reqs))
    assert [(r.hit.kind, r.hit.tier) for r in results] == [("exact", "l3")] * 4
    assert cache.embedder.batches == []  # the exact path ran before any embedding
    await b.aclose()


async def test_disabled_batching_embeds_each_lookup_alone(cache):
    sizes: list[int] = []
    b = MicroBatcher(cache, enabled=False, on_batch=sizes.append)
    results = await asyncio.gather(
        *(b.lookup(cache.request(f"Stored question number {i}")) for i in range(5))
    )
    assert all(r.hit is not None for r in results)
    assert cache.embedder.batches == [1] * 5 and sizes == []
    await b.aclose()


async def test_a_failing_embedder_fails_each_caller(cache):
    def broken(texts):
        return np.full((len(texts), 64), np.nan, dtype=np.float32)

    cache.embedder.embed = broken
    b = MicroBatcher(cache, window_seconds=0.01)
    results = await asyncio.gather(
        *(b.lookup(cache.request(f"q {i} here")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    await b.aclose()


async def test_a_batch_is_one_call_to_the_cache_batch_lookup(cache, monkeypatch):
    calls: list[tuple[int, list[object]]] = []
    real = cache.lookup_many

    async def spy(requests, *, thresholds=None):
        calls.append((len(requests), list(thresholds)))
        return await real(requests, thresholds=thresholds)

    monkeypatch.setattr(cache, "lookup_many", spy)
    b = MicroBatcher(cache, window_seconds=0.05)
    results = await asyncio.gather(
        b.lookup(cache.request("Stored question number 1"), threshold=0.8),
        b.lookup(cache.request("Stored question number 2, please"), threshold=0.99999),
        b.lookup(cache.request("Stored question number 3")),
    )
    assert len(calls) == 1 and calls[0][0] == 3
    assert calls[0][1][:2] == [0.8, 0.99999]  # each caller's own threshold
    assert results[0].hit is not None and results[2].hit is not None
    assert results[1].hit is None and results[1].embedding is not None  # reusable for a store
    await b.aclose()


async def test_one_bad_request_fails_only_its_caller(cache):
    from semcache.errors import InvalidInputError

    b = MicroBatcher(cache, window_seconds=0.05)
    results = await asyncio.gather(
        b.lookup(cache.request("Stored question number 4")),
        b.lookup(cache.request("Stored question number 5"), threshold=2.0),
        return_exceptions=True,
    )
    assert results[0].hit is not None and results[0].hit.value == 4
    assert isinstance(results[1], InvalidInputError)
    assert cache.embedder.batches == [2]  # still one embedding call for the batch
    await b.aclose()


async def test_embedding_never_blocks_the_event_loop(tmp_path):
    slow = RecordingEmbedder(delay_seconds=0.6)
    cfg = server_config(tmp_path, embedder=slow)
    async with in_process(create_app(cfg)) as client:
        slow.batches.clear()
        lookup = asyncio.create_task(
            client.post("/v1/lookup", json={"prompt": "a slow one"}, headers=auth(TENANT_A))
        )
        await asyncio.sleep(0.1)  # the lookup is now embedding
        t0 = time.perf_counter()
        assert (await client.get("/healthz")).status_code == 200
        assert time.perf_counter() - t0 < 0.3
        assert (await lookup).status_code == 200
        assert slow.batches == [1] and "MainThread" not in slow.threads


async def test_sidecar_batches_concurrent_http_lookups(tmp_path):
    emb = RecordingEmbedder(delay_seconds=0.05)
    cfg = server_config(tmp_path, embedder=emb, batch_window_ms=20)
    async with in_process(create_app(cfg)) as client:
        emb.batches.clear()
        rs = await asyncio.gather(
            *(
                client.post(
                    "/v1/lookup",
                    json={"prompt": f"question {i} for the batch"},
                    headers=auth(TENANT_A),
                )
                for i in range(16)
            )
        )
        assert all(r.status_code == 200 for r in rs)
        assert sum(emb.batches) == 16 and len(emb.batches) < 16
        metrics = (await client.get("/metrics")).text
        assert "semcache_embedding_batch_size_sum 16.0" in metrics
