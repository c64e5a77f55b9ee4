"""The decorator's plumbing on plain functions (hashing embedder, SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from semcache import (
    AsyncSemanticCache,
    CacheConfig,
    ConfigurationError,
    InvalidInputError,
    MemoryConfig,
    Policy,
    SemanticCache,
    SQLConfig,
)
from semcache.errors import BackendUnavailable
from semcache.readthrough import flights_of
from semcache.streaming import AsyncReplayStream, ReplayStream
from tests._sync import FlightWatch


@pytest.fixture
def cache(make_cache) -> SemanticCache:
    return make_cache()


@pytest.fixture
async def acache(clock, sqlite_url, hashing_embedder):
    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(similarity_threshold=0.8, verifier=None))
    async with AsyncSemanticCache(config, timer=clock) as c:
        yield c


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def bump(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


# -- keying -----------------------------------------------------------------------


def test_repeated_prompt_is_served_from_the_cache(cache) -> None:
    calls = Counter()

    @cache.cached
    def ask(prompt: str) -> str:
        return f"answer {calls.bump()} to {prompt}"

    assert ask("What is the capital of France?") == "answer 1 to What is the capital of France?"
    assert ask("What is the capital of France?") == "answer 1 to What is the capital of France?"
    assert ask(prompt="  What is the capital   of France? ") == "answer 1 to What is the capital of France?"
    assert calls.n == 1
    assert cache.stats()["saved_calls"] == 2


def test_other_arguments_are_scope(cache) -> None:
    calls = Counter()

    @cache.cached()
    def ask(prompt: str, temperature: float = 0.0, *, style: str = "short") -> dict:
        return {"n": calls.bump(), "t": temperature, "style": style}

    assert ask("hello world") == {"n": 1, "t": 0.0, "style": "short"}
    assert ask("hello world", 0.0) == {"n": 1, "t": 0.0, "style": "short"}  # defaults applied
    assert ask("hello world", temperature=0.7)["n"] == 2
    assert ask("hello world", style="long")["n"] == 3
    assert calls.n == 3


def test_two_functions_never_share_entries(cache) -> None:
    @cache.cached
    def summarize(prompt: str) -> str:
        return "summary"

    @cache.cached
    def translate(prompt: str) -> str:
        return "translation"

    assert summarize("the same text") == "summary"
    assert translate("the same text") == "translation"


def test_messages_model_and_system_prompt(cache) -> None:
    calls = Counter()

    @cache.cached
    def chat(*, messages: list, model: str, temperature: float = 1.0) -> str:
        return f"reply {calls.bump()}"

    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}]
    assert chat(messages=msgs, model="m1") == "reply 1"
    assert chat(messages=msgs, model="m1") == "reply 1"
    assert chat(messages=msgs, model="m2") == "reply 2"
    assert chat(messages=[{"role": "system", "content": "Be verbose."}, msgs[1]], model="m1") == "reply 3"
    assert chat(messages=msgs, model="m1", temperature=0.2) == "reply 4"


def test_custom_argument_names_and_request_from(cache) -> None:
    @cache.cached(prompt_arg="question", ignore=["client"])
    def ask(question: str, client: object) -> str:
        return question.upper()

    assert ask("why?", object()) == "WHY?"
    assert ask("why?", object()) == "WHY?"
    assert ask.cache_logic.cache.stats()["hits"] == 1

    @cache.cached(request_from=lambda a: {"prompt": a["payload"]["q"], "model": "m"})
    def raw(payload: dict) -> str:
        return "ok " + payload["q"]

    assert raw({"q": "x"}) == "ok x"
    assert raw.cache_request({"q": "x"}).model == "m"


def test_unreadable_signature_is_a_configuration_error(cache) -> None:
    with pytest.raises(ConfigurationError, match="prompt_arg"):

        @cache.cached
        def f(question: str) -> str:
            return question


def test_non_json_scope_argument_is_named(cache) -> None:
    @cache.cached
    def ask(prompt: str, client: object) -> str:
        return "x"

    with pytest.raises(ConfigurationError, match="ignore=\\['client'\\]"):
        ask("hello", object())


def test_uncacheable_request_goes_through(cache) -> None:
    calls = Counter()

    @cache.cached
    def chat(messages: list) -> str:
        return f"r{calls.bump()}"

    only_system = [{"role": "system", "content": "hi"}]
    assert chat(only_system) == "r1" and chat(only_system) == "r2"


def test_sync_async_mismatch_is_caught_at_decoration(cache, acache) -> None:
    async def afn(prompt: str) -> str:
        return prompt

    def sfn(prompt: str) -> str:
        return prompt

    with pytest.raises(ConfigurationError, match="AsyncSemanticCache"):
        cache.cached(afn)
    with pytest.raises(ConfigurationError, match="use SemanticCache"):
        acache.cached(sfn)

    async def agen(prompt: str) -> AsyncIterator[str]:
        yield prompt

    with pytest.raises(ConfigurationError):
        cache.wrap(agen)


def test_namespace_from_decorator_and_options(cache) -> None:
    calls = Counter()

    @cache.cached(namespace=lambda args: args["tenant"], ignore=["tenant"])
    def ask(prompt: str, tenant: str) -> str:
        return f"{tenant}:{calls.bump()}"

    assert ask("q", "a") == "a:1"
    assert ask("q", "b") == "b:2"
    assert ask("q", "a") == "a:1"
    with cache.options(namespace="c"):
        assert ask("q", "a") == "a:3"


# -- per-call controls ----------------------------------------------------------------


def test_per_call_controls(cache, clock) -> None:
    calls = Counter()

    @cache.cached(ttl_seconds=100)
    def ask(prompt: str) -> str:
        return f"a{calls.bump()}"

    with cache.options(bypass=True):
        assert ask("q") == "a1"
    assert ask("q") == "a2"  # bypass stored nothing
    with cache.options(store=False):
        assert ask("q") == "a2"  # looks up
        assert ask("other") == "a3"
    assert ask("other") == "a4"  # ... but did not store
    with cache.options(lookup=False):
        assert ask("q") == "a5"  # refresh: calls and stores
    assert ask("q") == "a5"
    with cache.options(ttl_seconds=5, tags=["faq"]):
        assert ask("short lived") == "a6"
    entry = cache.get_entry(ask.cache_request("short lived").key)
    assert entry.ttl_seconds == 5 and entry.tags == ("faq",)
    clock.advance(6)
    assert ask("short lived") == "a7"
    with pytest.raises(InvalidInputError, match="unknown cache option"):
        with cache.options(by_pass=True):
            pass


def test_options_are_scoped_to_their_cache(make_cache, tmp_path) -> None:
    a = make_cache()
    b = make_cache(sql=SQLConfig(url=f"sqlite:///{tmp_path}/b.db"))
    calls = Counter()

    @a.cached
    def fa(prompt: str) -> str:
        return f"a{calls.bump()}"

    @b.cached
    def fb(prompt: str) -> str:
        return f"b{calls.bump()}"

    fa("x"), fb("x")
    with a.options(bypass=True):
        assert fa("x") == "a3"
        assert fb("x") == "b2"  # still cached


def test_inner_options_override_exactly_what_they_name(cache, clock) -> None:
    from semcache.decorator import current_options, options

    calls = Counter()

    @cache.cached
    def ask(prompt: str) -> str:
        return f"a{calls.bump()}"

    with options(bypass=True), cache.options(bypass=False):
        assert current_options(cache).bypass is False
        assert ask("q") == "a1" and ask("q") == "a1"  # looked up and stored
    with options(store=False), cache.options(store=True):
        assert current_options(cache).store is True
    with cache.options(ttl_seconds=60, tags=["a"]), options(ttl_seconds=5, tags=["b"]):
        assert current_options(cache).ttl_seconds == 5 and current_options(cache).tags == ("a", "b")
        assert current_options().ttl_seconds == 5 and current_options().tags == ("b",)
        ask("short")
    clock.advance(6)
    assert ask("short") == "a3"  # stored with the inner ttl of 5s, not the outer 60s
    with options(namespace="t1"), cache.options(namespace=None):
        assert current_options(cache).namespace is None


def test_threshold_option(cache) -> None:
    calls = Counter()

    @cache.cached(threshold=0.5)
    def ask(prompt: str) -> str:
        return f"a{calls.bump()}"

    ask("how do I reset my password")
    assert ask("how do I reset my password please") == "a1"  # similar under the hashing embedder
    with cache.options(threshold=0.999):
        assert ask("how do I reset my password please") == "a2"
    with cache.options(semantic=False):
        assert ask("how do I reset my password now") == "a3"


# -- what is stored ----------------------------------------------------------------------


def test_values_round_trip(cache) -> None:
    values = iter(["text", {"a": [1, {"b": None}], "c": 1.5}, b"\x00bytes", [1, "two"]])

    @cache.cached
    def ask(prompt: str) -> object:
        return next(values)

    for p in ("s", "d", "b", "l"):
        first = ask(p)
        again = ask(p)
        assert again == first and type(again) is type(first)


def test_uncacheable_responses_are_returned_not_stored(cache) -> None:
    answers = iter([None, "  ", {"error": {"message": "overloaded"}}, "fine", "later"])

    @cache.cached
    def ask(prompt: str) -> object:
        return next(answers)

    assert ask("q") is None
    assert ask("q") == "  "
    assert ask("q") == {"error": {"message": "overloaded"}}
    assert ask("q") == "fine"
    assert ask("q") == "fine"


def test_should_cache_hook(cache) -> None:
    calls = Counter()

    @cache.cached(should_cache=lambda v: "cache me" in v)
    def ask(prompt: str) -> str:
        return f"{prompt} {calls.bump()}"

    assert ask("cache me") == "cache me 1" and ask("cache me") == "cache me 1"
    assert ask("skip") == "skip 2" and ask("skip") == "skip 3"


def test_exceptions_are_not_cached_and_reach_the_caller(cache) -> None:
    boom = RuntimeError("upstream 500")
    attempts = Counter()

    @cache.cached
    def ask(prompt: str) -> str:
        if attempts.bump() == 1:
            raise boom
        return "recovered"

    with pytest.raises(RuntimeError) as info:
        ask("q")
    assert info.value is boom
    assert ask("q") == "recovered"


def test_unstorable_result_is_returned(cache, caplog) -> None:
    class Custom:
        pass

    obj = Custom()

    @cache.cached
    def ask(prompt: str) -> Custom:
        return obj

    assert ask("q") is obj
    assert "cannot be cached" in caplog.text


# -- streams ---------------------------------------------------------------------------


def test_stream_recorded_and_replayed(cache) -> None:
    calls = Counter()

    @cache.cached
    def ask(prompt: str) -> Iterator[str]:
        calls.bump()
        yield from ["Hel", "lo", "!"]

    live = ask("greet")
    assert not isinstance(live, ReplayStream)
    assert list(live) == ["Hel", "lo", "!"]
    replay = ask("greet")
    assert isinstance(replay, ReplayStream)
    assert list(replay) == ["Hel", "lo", "!"]
    assert calls.n == 1


def test_abandoned_stream_stores_nothing(cache) -> None:
    calls = Counter()

    @cache.cached
    def ask(prompt: str) -> Iterator[str]:
        calls.bump()
        yield from ["a", "b", "c"]

    stream = ask("q")
    assert next(stream) == "a"
    stream.close()
    stream = ask("q")
    for _ in stream:
        break
    del stream
    assert list(ask("q")) == ["a", "b", "c"]
    assert calls.n == 3
    assert list(ask("q")) == ["a", "b", "c"] and calls.n == 3


def test_failed_stream_stores_nothing(cache) -> None:
    calls = Counter()

    @cache.cached
    def ask(prompt: str) -> Iterator[str]:
        yield "a"
        if calls.bump() == 1:
            raise ConnectionError("dropped")
        yield "b"

    with pytest.raises(ConnectionError):
        list(ask("q"))
    assert list(ask("q")) == ["a", "b"]
    assert list(ask("q")) == ["a", "b"] and calls.n == 2


# -- one call for many -----------------------------------------------------------------------


def test_stream_flag_on_an_unconvertible_stored_form_is_a_miss(cache) -> None:
    calls = Counter()

    @cache.cached
    def chat(prompt: str, stream: bool = False) -> object:
        calls.bump()
        return iter(["hel", "lo"]) if stream else "hello"

    assert chat("greet", stream=False) == "hello"
    assert list(chat("greet", stream=True)) == ["hel", "lo"]  # not the stored string
    assert chat("greet", stream=False) == "hello" and calls.n == 2  # the stored form was kept
    assert list(chat("other", stream=True)) == ["hel", "lo"]
    assert chat("other", stream=False) == "hello"  # not a replay of the stored stream
    assert list(chat("other", stream=True)) == ["hel", "lo"] and calls.n == 4


def test_concurrent_identical_calls_in_threads_make_one_call(cache) -> None:
    calls = Counter()
    joined = FlightWatch(flights_of(cache)).followers_joined(19)

    @cache.cached
    def ask(prompt: str) -> dict:
        calls.bump()
        assert joined.wait(5)  # the leader answers once the 19 others wait on it
        return {"answer": 42}

    results: list[object] = []
    barrier = threading.Barrier(20)

    def run() -> None:
        barrier.wait()
        results.append(ask("the question"))

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls.n == 1
    assert results == [{"answer": 42}] * 20
    assert len({id(r) for r in results}) == 20  # each caller gets its own copy
    assert cache.stats()["saved_calls"] == 19


def test_followers_get_the_leaders_exception(cache) -> None:
    calls = Counter()
    gate = threading.Event()
    watch = FlightWatch(flights_of(cache))

    @cache.cached
    def ask(prompt: str) -> str:
        calls.bump()
        gate.wait(5)
        raise ValueError("bad request")

    errors: list[BaseException] = []

    def run() -> None:
        try:
            ask("q")
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    watch.wait_followers(4)
    gate.set()
    for t in threads:
        t.join(5)
    assert calls.n == 1 and len(errors) == 5


def test_stream_followers_replay_the_leaders_stream(cache) -> None:
    calls = Counter()
    joined = FlightWatch(flights_of(cache)).followers_joined(4)

    @cache.cached
    def ask(prompt: str) -> Iterator[str]:
        calls.bump()
        assert joined.wait(5)  # the stream runs while the 4 others wait on it
        yield from ["x", "y"]

    out: list[list[str]] = []

    def run() -> None:
        out.append(list(ask("q")))

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls.n == 1 and out == [["x", "y"]] * 5


def test_failing_cacheability_check_returns_the_value_and_frees_the_key(cache) -> None:
    calls = Counter()

    def broken(value: object) -> bool:
        raise KeyError("boom")

    @cache.cached(should_cache=broken, wait_seconds=5)
    def ask(prompt: str) -> str:
        calls.bump()
        return "answer"

    @cache.cached(wait_seconds=5)
    def odd(prompt: str) -> dict:
        calls.bump()
        return {"choices": [{"message": "plain"}]}  # the default rule cannot read this shape

    @cache.cached(should_cache=broken, wait_seconds=5)
    def gen(prompt: str) -> Iterator[str]:
        calls.bump()
        yield "a"

    t0 = time.monotonic()
    assert ask("q") == "answer" and ask("q") == "answer"
    assert odd("q") == {"choices": [{"message": "plain"}]} and odd("q") == odd("q")
    assert list(gen("q")) == ["a"] and list(gen("q")) == ["a"]
    assert time.monotonic() - t0 < 2  # nobody waited for a leader that was never settled
    assert calls.n == 7 and len(flights_of(cache)) == 0


async def test_leader_cancelled_while_storing_frees_the_key(acache) -> None:
    calls = Counter()
    store = acache.sync.store
    storing, go = threading.Event(), threading.Event()

    def slow_store(*a, **k):  # runs in a worker thread
        storing.set()
        assert go.wait(5)
        return store(*a, **k)

    acache.sync.store = slow_store

    @acache.cached(wait_seconds=5)
    async def ask(prompt: str) -> str:
        calls.bump()
        return "answer"

    task = asyncio.create_task(ask("q"))
    assert await asyncio.to_thread(storing.wait, 5), "the leader never stored"
    task.cancel()  # while it stores
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    acache.sync.store = store
    t0 = time.monotonic()
    assert await asyncio.wait_for(ask("q"), 2) == "answer"
    assert time.monotonic() - t0 < 1 and len(flights_of(acache)) == 0


def test_followers_of_an_interrupted_leader_call_on_their_own(cache) -> None:
    calls = Counter()
    started, go = threading.Event(), threading.Event()
    watch = FlightWatch(flights_of(cache))

    @cache.cached(wait_seconds=5)
    def ask(prompt: str) -> str:
        if calls.bump() == 1:
            started.set()
            go.wait(5)
            raise KeyboardInterrupt
        return "answer"

    def lead() -> None:
        with pytest.raises(KeyboardInterrupt):
            ask("q")

    leader = threading.Thread(target=lead)
    leader.start()
    started.wait(5)
    out: list[str] = []
    follower = threading.Thread(target=lambda: out.append(ask("q")))
    follower.start()
    watch.wait_followers(1)
    go.set()
    leader.join(5)
    follower.join(5)
    assert out == ["answer"] and calls.n == 2


def test_a_thread_never_waits_on_its_own_unread_stream(cache) -> None:
    calls = Counter()

    @cache.cached(wait_seconds=5)
    def gen(prompt: str) -> Iterator[str]:
        calls.bump()
        yield from ["a", "b"]

    t0 = time.monotonic()
    streams = [gen(p) for p in ["x", "y", "x"]]  # made first, read later
    assert [list(s) for s in streams] == [["a", "b"]] * 3
    assert time.monotonic() - t0 < 2 and calls.n == 3


async def test_a_task_never_waits_on_its_own_unread_stream(acache) -> None:
    @acache.cached(wait_seconds=5)
    async def gen(prompt: str) -> AsyncIterator[str]:
        for tok in ["a", "b"]:
            yield tok

    @acache.cached(wait_seconds=5)
    async def ask(prompt: str) -> AsyncIterator[str]:
        return gen.__wrapped__(prompt)

    t0 = time.monotonic()
    first = await ask("x")
    second = await ask("x")  # same task: it must not wait for the first stream to be read
    assert [t async for t in first] == ["a", "b"] and [t async for t in second] == ["a", "b"]
    assert time.monotonic() - t0 < 1


def test_single_flight_can_be_turned_off(cache) -> None:
    calls = Counter()

    together = threading.Barrier(3)

    @cache.cached(single_flight=False)
    def ask(prompt: str) -> str:
        calls.bump()
        together.wait(5)  # all three calls are in flight at once, none waits on another
        return "x"

    threads = [threading.Thread(target=ask, args=("q",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert calls.n == 3


# -- async -------------------------------------------------------------------------------------


async def test_async_function(acache) -> None:
    calls = Counter()

    @acache.cached
    async def ask(prompt: str) -> str:
        calls.bump()
        await asyncio.sleep(0)  # a suspension point, as a real client has; no wait
        return f"async {prompt}"

    assert await ask("q") == "async q"
    assert await ask("q") == "async q"
    assert calls.n == 1


async def test_async_concurrent_identical_calls_make_one_call(acache) -> None:
    calls = Counter()
    joined = FlightWatch(flights_of(acache)).followers_joined_async(19)

    @acache.cached
    async def ask(prompt: str) -> str:
        calls.bump()
        await asyncio.wait_for(joined.wait(), 5)  # the 19 other tasks wait on this call
        return "shared"

    results = await asyncio.gather(*(ask("same") for _ in range(20)))
    assert results == ["shared"] * 20 and calls.n == 1
    assert acache.stats()["coalesced_calls"] == 19


async def test_async_generator_function(acache) -> None:
    calls = Counter()

    @acache.cached
    async def ask(prompt: str) -> AsyncIterator[str]:
        calls.bump()
        for tok in ["a", "b"]:
            yield tok

    assert [t async for t in ask("q")] == ["a", "b"]
    assert [t async for t in ask("q")] == ["a", "b"]
    assert calls.n == 1
    # abandoned: nothing stored
    async for _ in ask("other"):
        break
    assert [t async for t in ask("other")] == ["a", "b"]
    assert calls.n == 3


async def test_async_function_returning_a_stream(acache) -> None:
    async def tokens() -> AsyncIterator[str]:
        for t in ["1", "2"]:
            yield t

    @acache.cached
    async def ask(prompt: str) -> AsyncIterator[str]:
        return tokens()

    assert [t async for t in await ask("q")] == ["1", "2"]
    replay = await ask("q")
    assert isinstance(replay, AsyncReplayStream)
    assert [t async for t in replay] == ["1", "2"]


async def test_async_options(acache) -> None:
    calls = Counter()

    @acache.cached
    async def ask(prompt: str) -> str:
        return f"a{calls.bump()}"

    await ask("q")
    with acache.options(bypass=True):
        assert await ask("q") == "a2"
    assert await ask("q") == "a1"


# -- tiers failing -------------------------------------------------------------------------------


class _DownTier:
    """A tier whose every call fails (a Redis or database outage)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, *a: object) -> None:
        raise BackendUnavailable(f"{self.name} is down")

    get = set = delete = invalidate = _fail

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def test_tier_outage_never_fails_a_working_call(clock, hashing_embedder) -> None:
    with SemanticCache(CacheConfig(embedder=hashing_embedder, policy=Policy(verifier=None)), timer=clock, tiers=[_DownTier("l1"), _DownTier("l3")]) as cache:
        calls = Counter()

        @cache.cached
        def ask(prompt: str) -> str:
            return f"a{calls.bump()}"

        assert ask("q") == "a1"
        assert ask("q") == "a2"  # nothing could be stored, the call still works
        assert cache.stats()["tier_errors"]["l1"] >= 1


def test_partial_outage_still_caches_in_the_tiers_that_work(clock, sqlite_url, hashing_embedder) -> None:
    from semcache.tiers.memory import MemoryBackend

    with SemanticCache(
        CacheConfig(embedder=hashing_embedder, policy=Policy(verifier=None)), timer=clock, tiers=[MemoryBackend(), _DownTier("l2")]
    ) as cache:
        calls = Counter()

        @cache.cached
        def ask(prompt: str) -> str:
            return f"a{calls.bump()}"

        assert ask("q") == "a1" and ask("q") == "a1"


def test_savings_and_prices(clock, sqlite_url, hashing_embedder) -> None:
    config = CacheConfig(
        memory=MemoryConfig(),
        sql=SQLConfig(url=sqlite_url),
        embedder=hashing_embedder,
        policy=Policy(verifier=None),
        prices={"gpt-test": (1.0, 2.0)},
    )
    with SemanticCache(config, timer=clock) as cache:

        @cache.cached
        def chat(messages: list, model: str) -> dict:
            return {
                "object": "chat.completion",
                "model": "gpt-test-2024",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
            }

        msgs = [{"role": "user", "content": "hello"}]
        chat(msgs, "gpt-test")
        chat(msgs, "gpt-test")
        chat(msgs, "gpt-test")
        s = cache.stats()
        assert s["saved_calls"] == 2
        assert s["saved_tokens"] == 3000
        assert s["saved_cost_usd"] == pytest.approx(2 * (1000 * 1.0 + 500 * 2.0) / 1e6)


def test_price_table_validation() -> None:
    from semcache.pricing import ModelPrice, PriceTable

    t = PriceTable({"gpt-4o": (2.5, 10), "gpt-4o-mini": {"input": 0.15, "output": 0.6}})
    assert t.price_for("gpt-4o-mini-2024-07-18") == ModelPrice(input_per_million=0.15, output_per_million=0.6)
    assert t.price_for("gpt-4o-2024") == ModelPrice(input_per_million=2.5, output_per_million=10)
    assert t.price_for("claude") is None and t.cost_usd("x", {"prompt_tokens": 1}) is None
    with pytest.raises(ConfigurationError):
        PriceTable({"m": (-1, 0)})
    with pytest.raises(ConfigurationError):
        CacheConfig(prices={"m": "cheap"})


# -- the drivers -------------------------------------------------------------------------------


async def test_the_async_driver_uses_only_the_awaitable_cache_api(acache, monkeypatch) -> None:
    from semcache.async_cache import AsyncSemanticCache

    def reach_in(self):
        raise AssertionError("the decorator reached into AsyncSemanticCache.sync")

    monkeypatch.setattr(AsyncSemanticCache, "sync", property(reach_in))
    calls = Counter()

    @acache.cached
    async def ask(prompt: str) -> str:
        return f"answer {calls.bump()}"

    @acache.cached
    async def gen(prompt: str) -> AsyncIterator[str]:
        calls.bump()
        yield "a"

    assert await ask("q") == "answer 1" and await ask("q") == "answer 1"
    assert [t async for t in gen("q")] == ["a"] and [t async for t in gen("q")] == ["a"]
    with acache.options(bypass=True):
        assert await ask("q") == "answer 3"
    assert calls.n == 3


async def test_a_sync_stream_of_an_async_function_is_stored_off_the_event_loop(acache) -> None:
    loop_thread = threading.get_ident()
    store_threads: list[int] = []
    real_store = acache.sync.store  # observed from the test, underneath the awaitable API

    def spy(*a, **k):
        store_threads.append(threading.get_ident())
        return real_store(*a, **k)

    acache.sync.store = spy
    calls = Counter()

    @acache.cached
    async def ask(prompt: str) -> Iterator[str]:
        calls.bump()
        return iter(["a", "b"])

    stream = await ask("q")
    assert list(stream) == ["a", "b"]
    # the same task asks again at once: it waits for the store instead of calling again
    again = await ask("q")
    assert [t async for t in again] == ["a", "b"] and calls.n == 1
    await ask.cache_logic.drain()
    assert store_threads and loop_thread not in store_threads
    assert len(flights_of(acache)) == 0


def test_sync_and_async_drivers_share_one_pure_base(cache, acache) -> None:
    from semcache.decorator import AsyncCachedFunction, CachedFunction, SyncCachedFunction

    @cache.cached
    def a(prompt: str) -> str:
        return "a"

    @acache.cached
    async def b(prompt: str) -> str:
        return "b"

    assert isinstance(a.cache_logic, SyncCachedFunction) and isinstance(b.cache_logic, AsyncCachedFunction)
    assert isinstance(a.cache_logic, CachedFunction) and isinstance(b.cache_logic, CachedFunction)
    # the same request for the same call, whichever driver
    assert a.cache_request("q").scope != b.cache_request("q").scope  # scoped by function name
    assert a.cache_logic.request(("q",), {}).text == b.cache_logic.request(("q",), {}).text
