"""The read-through's cross-process lock on a real Redis (SEMCACHE_TEST_REDIS_URL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from semcache import AsyncSemanticCache, CacheConfig, Policy, RedisConfig, SemanticCache, SQLConfig
from semcache.singleflight import AsyncRedisLock

pytestmark = pytest.mark.redis


@pytest.fixture
async def aredis(redis_url, key_prefix):
    import redis.asyncio

    from semcache.tiers.redis import _glob_escape

    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=_glob_escape(key_prefix) + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_a_native_async_lock_is_released_after_a_sync_stream_of_an_async_function(
    aredis, key_prefix, sqlite_url, hashing_embedder, clock
) -> None:
    lock = AsyncRedisLock(aredis, prefix=f"{key_prefix}lock:", timeout_seconds=30)
    assert lock.native
    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(verifier=None))
    async with AsyncSemanticCache(config, timer=clock) as acache:
        loop_thread = threading.get_ident()
        store_threads: list[int] = []
        real_store = acache.sync.store  # observed from the test, underneath the awaitable API

        def spy(*a, **k):
            store_threads.append(threading.get_ident())
            return real_store(*a, **k)

        acache.sync.store = spy

        @acache.cached(lock=lock)
        async def ask(prompt: str) -> Iterator[str]:
            return iter(["a", "b"])

        key = ask.cache_request("q").key
        stream = await ask("q")
        assert await lock.held(key)  # held while the stream is being read
        assert list(stream) == ["a", "b"]
        await ask.cache_logic.drain()
        assert not await lock.held(key)  # released once stored, not left to expire
        assert store_threads and loop_thread not in store_threads  # never blocked the loop
        assert [t async for t in await ask("q")] == ["a", "b"]


async def test_a_dropped_sync_stream_releases_a_native_async_lock(
    aredis, key_prefix, sqlite_url, hashing_embedder, clock
) -> None:
    lock = AsyncRedisLock(aredis, prefix=f"{key_prefix}lock:", timeout_seconds=30)
    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(verifier=None))
    async with AsyncSemanticCache(config, timer=clock) as acache:

        @acache.cached(lock=lock)
        async def ask(prompt: str) -> Iterator[str]:
            return iter(["a", "b"])

        key = ask.cache_request("q").key
        stream = await ask("q")
        assert next(stream) == "a"
        stream.close()
        await ask.cache_logic.drain()
        assert not await lock.held(key)


def test_the_redis_tier_is_found_in_one_place(redis_url, key_prefix, sqlite_url, hashing_embedder, monkeypatch) -> None:
    import semcache.readthrough.locks as locks

    seen: list[object] = []
    real = locks.redis_tier

    def spy(cache):
        seen.append(cache)
        return real(cache)

    monkeypatch.setattr(locks, "redis_tier", spy)
    config = CacheConfig(
        redis=RedisConfig(url=redis_url, prefix=key_prefix),
        sql=SQLConfig(url=sqlite_url),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:

        @cache.cached(lock=True)
        def ask(prompt: str) -> str:
            return "answer"

        assert ask("q") == "answer"
        assert seen == [cache]
        lock = ask.cache_logic._get_lock()
        assert lock.prefix == f"{key_prefix}lock:" and not lock.held(ask.cache_request("q").key)


async def test_the_proxy_finds_its_lock_through_the_read_through(
    redis_url, key_prefix, tmp_path, monkeypatch
) -> None:
    import semcache.readthrough.locks as locks
    from semcache.server.app import create_app
    from tests._sidecar import in_process, server_config

    seen: list[object] = []
    real = locks.redis_tier
    monkeypatch.setattr(locks, "redis_tier", lambda cache: seen.append(cache) or real(cache))
    cfg = server_config(tmp_path, redis_url=redis_url, redis_prefix=key_prefix, upstream_url="http://upstream.test/v1")
    app = create_app(cfg)
    async with in_process(app):
        proxy = app.state.sidecar.proxy
        assert len(seen) == 1 and proxy.lock is not None and proxy.lock.prefix == f"{key_prefix}lock:"


async def test_streamed_misses_on_two_replicas_make_one_upstream_call(redis_url, key_prefix, tmp_path) -> None:
    import asyncio
    import json

    import httpx

    from semcache.server.app import create_app
    from tests._sidecar import TENANT_A, auth, in_process, server_config

    gate, called, waiting, calls = asyncio.Event(), asyncio.Event(), asyncio.Event(), []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        called.set()
        await gate.wait()
        chunks = [
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "shared"}, "finish_reason": None}]},
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    def replica(name: str):
        (tmp_path / name).mkdir()
        cfg = server_config(
            tmp_path / name, redis_url=redis_url, redis_prefix=key_prefix, upstream_url="http://upstream.test/v1"
        )
        return create_app(cfg, upstream_transport=httpx.MockTransport(handler))

    a, b = replica("a"), replica("b")
    body = {"model": "m", "messages": [{"role": "user", "content": "across replicas"}], "stream": True}
    async with in_process(a) as ca, in_process(b) as cb:
        lock_b = b.state.sidecar.proxy.lock
        acquire = lock_b.acquire

        async def watched(key):
            token = await acquire(key)
            if token is None:
                waiting.set()  # replica b found replica a's lock taken
            return token

        lock_b.acquire = watched
        first = asyncio.create_task(ca.post("/v1/chat/completions", json=body, headers=auth(TENANT_A)))
        await asyncio.wait_for(called.wait(), 10)  # replica a leads, under the lock
        second = asyncio.create_task(cb.post("/v1/chat/completions", json=body, headers=auth(TENANT_A)))
        await asyncio.wait_for(waiting.wait(), 10)
        gate.set()
        ra, rb = await asyncio.wait_for(asyncio.gather(first, second), 20)
    assert len(calls) == 1
    assert "shared" in ra.text and "shared" in rb.text and rb.text.rstrip().endswith("data: [DONE]")
