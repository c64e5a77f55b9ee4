"""The decorator around the real ``openai`` client, talking to a local stand-in upstream.

The stand-in answers after a deliberate delay, so each test can show the upstream
call count drop and the latency fall. Tests marked ``model`` use the real
all-MiniLM-L6-v2; the rest use the hashing embedder (they test plumbing, not meaning).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from semcache import (
    AsyncSemanticCache,
    CacheConfig,
    MemoryConfig,
    Policy,
    RedisConfig,
    SemanticCache,
    SQLConfig,
)
from semcache.streaming import AsyncReplayStream, ReplayStream

try:
    from tests._servers import RedisServer, RedisServerUnavailable, free_port
    from tests.upstream import StandInUpstream
except ImportError:  # run without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests._servers import RedisServer, RedisServerUnavailable, free_port
    from tests.upstream import StandInUpstream

DELAY = 0.3
MODEL = "stand-in-1"


def user(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def upstream():
    with StandInUpstream(delay_seconds=DELAY, chunk_delay_seconds=0.01, model=MODEL) as up:
        yield up


@pytest.fixture
def up(upstream):
    upstream.reset()
    upstream.delay_seconds = DELAY
    return upstream


@pytest.fixture
def client(up):
    with openai.OpenAI(base_url=up.base_url, api_key="test", max_retries=0) as c:
        yield c


@pytest.fixture
def config(tmp_path, hashing_embedder):
    return CacheConfig(
        memory=MemoryConfig(),
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"),
        embedder=hashing_embedder,
        policy=Policy(similarity_threshold=0.95, verifier=None),
    )


@pytest.fixture
def cache(config):
    with SemanticCache(config) as c:
        yield c


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# -- meaning: the real model ------------------------------------------------------------


@pytest.mark.model
def test_paraphrase_hit_through_the_decorator(up, client, tmp_path, minilm) -> None:
    # the default Policy: the shipped verifier decides the semantic hit
    config = CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"), embedder=minilm)
    with SemanticCache(config) as cache:
        cache.verifier.load()  # load the model before timing
        create = cache.wrap(client.chat.completions.create)
        first, cold = timed(create, model=MODEL, messages=user("What is the tallest mountain in the world?"))
        again, warm = timed(create, model=MODEL, messages=user("What's the tallest mountain in the world?"))
        other, _ = timed(create, model=MODEL, messages=user("How do I bake sourdough bread?"))
    assert up.calls == 2  # the paraphrase made no call; the unrelated question did
    assert type(again) is ChatCompletion and again == first
    assert again.choices[0].message.content == "answer 1: What is the tallest mountain in the world?"
    assert other.choices[0].message.content.startswith("answer 2:")
    assert cold >= DELAY and warm < DELAY / 3
    assert cache.stats()["hits_by"] == {"l1_semantic": 1}
    assert cache.stats()["verifier"]["calls"] == 1  # the unrelated question is below the floor


@pytest.mark.model
async def test_paraphrase_hit_async_client(up, tmp_path, minilm) -> None:
    # the default Policy: the shipped verifier decides the semantic hit
    config = CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"), embedder=minilm)
    async with AsyncSemanticCache(config) as cache, openai.AsyncOpenAI(
        base_url=up.base_url, api_key="test", max_retries=0
    ) as aclient:
        create = cache.wrap(aclient.chat.completions.create)
        first = await create(model=MODEL, messages=user("What is the tallest mountain in the world?"))
        again = await create(model=MODEL, messages=user("What's the tallest mountain in the world?"))
        assert cache.stats()["hits_by"] == {"l1_semantic": 1} and cache.stats()["verifier"]["rejections"] == 0
    assert up.calls == 1 and type(again) is ChatCompletion and again == first


# -- scope ---------------------------------------------------------------------------------


def test_other_system_prompt_or_temperature_misses(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    q = "Summarise the plot of Hamlet."
    a = create(model=MODEL, messages=user(q, system="Be terse."), temperature=0)
    assert create(model=MODEL, messages=user(q, system="Be terse."), temperature=0) == a
    assert up.calls == 1
    b = create(model=MODEL, messages=user(q, system="Answer as a pirate."), temperature=0)
    c = create(model=MODEL, messages=user(q, system="Be terse."), temperature=0.9)
    d = create(model=MODEL + "-large", messages=user(q, system="Be terse."), temperature=0)
    e = create(model=MODEL, messages=user("Earlier.") + [{"role": "assistant", "content": "Ok."}] + user(q, "Be terse."))
    assert up.calls == 5
    assert len({x.id for x in (a, b, c, d, e)}) == 5
    # the stream flag and the client's timeout do not split the cache
    assert create(model=MODEL, messages=user(q, system="Be terse."), temperature=0, timeout=30) == a
    assert up.calls == 5


def test_tenants_do_not_share(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    with cache.options(namespace="tenant-a"):
        create(model=MODEL, messages=user("hello"))
    with cache.options(namespace="tenant-b"):
        create(model=MODEL, messages=user("hello"))
    with cache.options(namespace="tenant-a"):
        create(model=MODEL, messages=user("hello"))
    assert up.calls == 2


# -- values --------------------------------------------------------------------------------


def test_chat_completion_round_trips_exactly(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    fresh = create(model=MODEL, messages=user("Name three primes."))
    cached = create(model=MODEL, messages=user("Name three primes."))
    assert up.calls == 1
    assert type(cached) is type(fresh) is ChatCompletion
    assert cached == fresh and cached is not fresh
    assert cached.to_dict() == fresh.to_dict()
    assert cached.usage == fresh.usage and cached.choices[0].message == fresh.choices[0].message


def test_content_filter_and_empty_completions_are_not_stored(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    for marker in ("[[filter]]", "[[empty]]"):
        r1 = create(model=MODEL, messages=user(f"tell me {marker}"))
        r2 = create(model=MODEL, messages=user(f"tell me {marker}"))
        assert r1.id != r2.id
    assert up.calls == 4
    assert r2.choices[0].message.content == ""


@pytest.mark.parametrize("status,exc", [(500, "InternalServerError"), (429, "RateLimitError")])
def test_upstream_error_is_raised_unchanged_and_not_cached(up, client, cache, status, exc) -> None:
    create = cache.wrap(client.chat.completions.create)
    prompt = user(f"please fail [[error:{status}]]")
    with pytest.raises(openai.APIStatusError) as bare:
        client.chat.completions.create(model=MODEL, messages=prompt)
    with pytest.raises(openai.APIStatusError) as wrapped:
        create(model=MODEL, messages=prompt)
    assert type(wrapped.value) is type(bare.value) and type(bare.value).__name__ == exc
    assert wrapped.value.status_code == status and wrapped.value.message == bare.value.message
    with pytest.raises(openai.APIStatusError):
        create(model=MODEL, messages=prompt)
    assert up.calls == 3  # every call reached the upstream
    assert cache.stats()["sets"] == 0


# -- streaming ---------------------------------------------------------------------------------


def test_stream_recorded_and_replayed_with_the_same_chunk_type(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    kwargs = {"model": MODEL, "messages": user("Count to five slowly."), "stream": True, "stream_options": {"include_usage": True}}
    live_stream = create(**kwargs)
    assert isinstance(live_stream.response.status_code, int)  # the live stream keeps its interface
    live = list(live_stream)
    replay_stream, t_replay = timed(create, **kwargs)
    assert isinstance(replay_stream, ReplayStream)
    replay = list(replay_stream)
    assert up.calls == 1
    assert [type(c) for c in replay] == [type(c) for c in live] and type(live[0]) is ChatCompletionChunk
    assert replay == live
    text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    assert text == "answer 1: Count to five slowly."
    assert t_replay < DELAY / 3
    # the same request without streaming gets the assembled completion
    whole = create(model=MODEL, messages=user("Count to five slowly."))
    assert type(whole) is ChatCompletion and whole.choices[0].message.content == text
    assert whole.usage.total_tokens == live[-1].usage.total_tokens
    assert up.calls == 1
    assert cache.stats()["saved_tokens"] == 2 * live[-1].usage.total_tokens


def test_stored_completion_replayed_as_a_stream(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    whole = create(model=MODEL, messages=user("Say hi."))
    chunks = list(create(model=MODEL, messages=user("Say hi."), stream=True))
    assert up.calls == 1
    assert all(type(c) is ChatCompletionChunk for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


def test_abandoned_stream_stores_nothing(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    kwargs = {"model": MODEL, "messages": user("Tell me a long story about a dragon."), "stream": True}
    stream = create(**kwargs)
    next(stream), next(stream)
    stream.close()  # the consumer walks away halfway
    with create(**kwargs) as stream:  # and again, leaving the with block early
        next(stream)
    assert up.calls == 2 and cache.stats()["sets"] == 0
    complete = list(create(**kwargs))
    assert up.calls == 3
    assert list(create(**kwargs)) == complete and up.calls == 3


def test_stream_cut_by_the_upstream_is_raised_and_not_stored(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    kwargs = {"model": MODEL, "messages": user("one two three four [[cut]]"), "stream": True}
    with pytest.raises(openai.APIConnectionError):
        list(create(**kwargs))
    with pytest.raises(openai.APIConnectionError):
        list(create(**kwargs))
    assert up.calls == 2 and cache.stats()["sets"] == 0


async def test_async_stream_recorded_and_replayed(up, config) -> None:
    async with AsyncSemanticCache(config) as cache, openai.AsyncOpenAI(
        base_url=up.base_url, api_key="test", max_retries=0
    ) as aclient:
        create = cache.wrap(aclient.chat.completions.create)
        kwargs = {"model": MODEL, "messages": user("Stream me, async."), "stream": True}
        live = [c async for c in await create(**kwargs)]
        replay_stream = await create(**kwargs)
        assert isinstance(replay_stream, AsyncReplayStream)
        replay = [c async for c in replay_stream]
        assert replay == live and [type(c) for c in replay] == [type(c) for c in live]
        # abandoned async stream: nothing stored
        stream = await create(model=MODEL, messages=user("Abandon me."), stream=True)
        await stream.__anext__()
        await stream.close()
        [c async for c in await create(model=MODEL, messages=user("Abandon me."), stream=True)]
    assert up.calls == 3


# -- one call for many ---------------------------------------------------------------------------


def test_twenty_concurrent_threads_make_one_upstream_call(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    barrier = threading.Barrier(20)
    results: list[ChatCompletion] = []

    def run() -> None:
        barrier.wait()
        results.append(create(model=MODEL, messages=user("What is the boiling point of water?")))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wall = time.perf_counter() - t0
    assert up.calls == 1 and len(results) == 20
    assert all(type(r) is ChatCompletion and r == results[0] for r in results)
    assert wall < 4 * DELAY  # one upstream round trip, not twenty
    stats = cache.stats()
    assert stats["saved_calls"] == 19 and stats["coalesced_calls"] == 19


async def test_twenty_concurrent_tasks_make_one_upstream_call(up, config) -> None:
    async with AsyncSemanticCache(config) as cache, openai.AsyncOpenAI(
        base_url=up.base_url, api_key="test", max_retries=0
    ) as aclient:
        create = cache.wrap(aclient.chat.completions.create)
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(create(model=MODEL, messages=user("What is the boiling point of water?")) for _ in range(20))
        )
        wall = time.perf_counter() - t0
    assert up.calls == 1 and all(r == results[0] for r in results)
    assert wall < 4 * DELAY


def test_concurrent_streams_make_one_upstream_call(up, client, cache) -> None:
    create = cache.wrap(client.chat.completions.create)
    out: list[list[str]] = []

    def run() -> None:
        chunks = list(create(model=MODEL, messages=user("Stream once for everyone."), stream=True))
        out.append(["".join(c.choices[0].delta.content or "" for c in chunks if c.choices)])

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert up.calls == 1 and len(out) == 8 and len({o[0] for o in out}) == 1


@pytest.fixture
def redis_server():
    try:
        server = RedisServer()
    except RedisServerUnavailable as e:
        pytest.skip(str(e))
    with server:
        yield server


def test_redis_lock_collapses_calls_across_processes(up, client, tmp_path, hashing_embedder, redis_server) -> None:
    # two caches = two processes: separate L1, index and in-process single-flight; shared Redis and L3
    def make() -> SemanticCache:
        return SemanticCache(
            CacheConfig(
                redis=RedisConfig(url=redis_server.url, prefix="lock-test:"),
                sql=SQLConfig(url=f"sqlite:///{tmp_path}/shared.db"),
                embedder=hashing_embedder,
                policy=Policy(verifier=None),
            )
        ).open()

    caches = [make(), make()]
    try:
        fns = [c.wrap(client.chat.completions.create, lock=True, lock_timeout_seconds=5) for c in caches]
        barrier = threading.Barrier(10)
        results: list[ChatCompletion] = []

        def run(i: int) -> None:
            barrier.wait()
            results.append(fns[i % 2](model=MODEL, messages=user("Shared across processes?")))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert up.calls == 1 and len(results) == 10 and all(r == results[0] for r in results)
    finally:
        for c in caches:
            c.close()


def test_crashed_lock_holder_blocks_only_until_the_lock_expires(up, client, tmp_path, hashing_embedder, redis_server) -> None:
    from semcache.singleflight import RedisLock

    config = CacheConfig(
        redis=RedisConfig(url=redis_server.url, prefix="crash-test:"),
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:
        create = cache.wrap(client.chat.completions.create, lock=True, lock_timeout_seconds=1.0)
        key = create.cache_request(model=MODEL, messages=user("held by a dead process")).key
        l2 = next(t for t in cache.tiers if t.name == "l2")
        assert RedisLock(l2.client, prefix="crash-test:lock:", timeout_seconds=1.0).acquire(key)  # never released
        r, took = timed(create, model=MODEL, messages=user("held by a dead process"))
    assert r.choices[0].message.content.startswith("answer")
    assert up.calls == 1 and took < 1.0 + 3 * DELAY


# -- outages ---------------------------------------------------------------------------------------


def test_redis_down_never_fails_a_working_call(up, client, tmp_path, hashing_embedder) -> None:
    config = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_seconds=0.2),
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:
        create = cache.wrap(client.chat.completions.create, lock=True)
        first = create(model=MODEL, messages=user("Is Redis up?"))
        again = create(model=MODEL, messages=user("Is Redis up?"))
    assert first == again and up.calls == 1  # served by L1/L3 while L2 is down


def test_redis_dying_mid_run_never_fails_a_working_call(up, client, tmp_path, hashing_embedder, redis_server) -> None:
    config = CacheConfig(
        memory=None,
        redis=RedisConfig(url=redis_server.url, socket_timeout_seconds=0.3, pubsub=False),
        sql=None,
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:
        create = cache.wrap(client.chat.completions.create)
        create(model=MODEL, messages=user("before the outage"))
        assert create(model=MODEL, messages=user("before the outage")) is not None and up.calls == 1
        redis_server.kill()
        r = create(model=MODEL, messages=user("during the outage"))
        assert r.choices[0].message.content.startswith("answer 2")
        r = create(model=MODEL, messages=user("during the outage, again"))
        assert r.choices[0].message.content.startswith("answer 3")
        stream = list(create(model=MODEL, messages=user("a stream during the outage"), stream=True))
        assert stream and up.calls == 4


# -- cost accounting -----------------------------------------------------------------------------------


def test_tokens_calls_and_money_saved(up, client, tmp_path, hashing_embedder) -> None:
    config = CacheConfig(
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/c.db"),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
        prices={MODEL: {"input": 3.0, "output": 15.0}},
    )
    with SemanticCache(config) as cache:
        create = cache.wrap(client.chat.completions.create)
        r = create(model=MODEL, messages=user("How much does this cost?"))
        for _ in range(3):
            create(model=MODEL, messages=user("How much does this cost?"))
        s = cache.stats()
    u = r.usage
    assert s["saved_calls"] == 3
    assert s["saved_tokens"] == 3 * u.total_tokens
    assert s["saved_cost_usd"] == pytest.approx(3 * (u.prompt_tokens * 3.0 + u.completion_tokens * 15.0) / 1e6)
