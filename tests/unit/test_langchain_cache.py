"""The LangChain adapter against langchain-core's expectations for a ``BaseCache``.

When ``langchain-tests`` is installed its own ``SyncCacheTestSuite`` and
``AsyncCacheTestSuite`` run; otherwise a copy of their checks does (the same
sample prompt, LLM string and generations). Then real langchain-core models use
the adapter as their cache.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.caches import BaseCache
from langchain_core.language_models import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, Generation

from semcache import AsyncSemanticCache, CacheConfig, Policy, SQLConfig
from semcache.contrib.langchain import SemcacheLangChainCache

try:  # the official suites, when langchain-tests is installed
    from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite
except ImportError:

    class SyncCacheTestSuite:  # type: ignore[no-redef]
        """The checks of langchain_tests.integration_tests.SyncCacheTestSuite."""

        def get_sample_prompt(self) -> str:
            return "Sample prompt for testing."

        def get_sample_llm_string(self) -> str:
            return "Sample LLM string configuration."

        def get_sample_generation(self) -> Generation:
            return Generation(text="Sample generated text.", generation_info={"reason": "test"})

        def test_cache_is_empty(self, cache: BaseCache) -> None:
            assert cache.lookup(self.get_sample_prompt(), self.get_sample_llm_string()) is None

        def test_update_cache(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            cache.update(prompt, llm_string, [generation])
            assert cache.lookup(prompt, llm_string) == [generation]

        def test_cache_still_empty(self, cache: BaseCache) -> None:
            assert cache.lookup(self.get_sample_prompt(), self.get_sample_llm_string()) is None

        def test_clear_cache(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            cache.update(prompt, llm_string, [generation])
            cache.clear()
            assert cache.lookup(prompt, llm_string) is None

        def test_cache_miss(self, cache: BaseCache) -> None:
            assert cache.lookup("Nonexistent prompt", self.get_sample_llm_string()) is None

        def test_cache_hit(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            cache.update(prompt, llm_string, [generation])
            assert cache.lookup(prompt, llm_string) == [generation]

        def test_update_cache_with_multiple_generations(self, cache: BaseCache) -> None:
            prompt, llm_string = self.get_sample_prompt(), self.get_sample_llm_string()
            generations = [self.get_sample_generation(), Generation(text="Another generated text.")]
            cache.update(prompt, llm_string, generations)
            assert cache.lookup(prompt, llm_string) == generations

    class AsyncCacheTestSuite:  # type: ignore[no-redef]
        """The checks of langchain_tests.integration_tests.AsyncCacheTestSuite."""

        get_sample_prompt = SyncCacheTestSuite.get_sample_prompt
        get_sample_llm_string = SyncCacheTestSuite.get_sample_llm_string
        get_sample_generation = SyncCacheTestSuite.get_sample_generation

        async def test_cache_is_empty(self, cache: BaseCache) -> None:
            assert await cache.alookup(self.get_sample_prompt(), self.get_sample_llm_string()) is None

        async def test_update_cache(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            await cache.aupdate(prompt, llm_string, [generation])
            assert await cache.alookup(prompt, llm_string) == [generation]

        async def test_cache_still_empty(self, cache: BaseCache) -> None:
            assert await cache.alookup(self.get_sample_prompt(), self.get_sample_llm_string()) is None

        async def test_clear_cache(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            await cache.aupdate(prompt, llm_string, [generation])
            await cache.aclear()
            assert await cache.alookup(prompt, llm_string) is None

        async def test_cache_miss(self, cache: BaseCache) -> None:
            assert await cache.alookup("Nonexistent prompt", self.get_sample_llm_string()) is None

        async def test_cache_hit(self, cache: BaseCache) -> None:
            prompt, llm_string, generation = self.get_sample_prompt(), self.get_sample_llm_string(), self.get_sample_generation()
            await cache.aupdate(prompt, llm_string, [generation])
            assert await cache.alookup(prompt, llm_string) == [generation]

        async def test_update_cache_with_multiple_generations(self, cache: BaseCache) -> None:
            prompt, llm_string = self.get_sample_prompt(), self.get_sample_llm_string()
            generations = [self.get_sample_generation(), Generation(text="Another generated text.")]
            await cache.aupdate(prompt, llm_string, generations)
            assert await cache.alookup(prompt, llm_string) == generations


class TestSyncCache(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, make_cache) -> BaseCache:
        return SemcacheLangChainCache(make_cache())


class TestAsyncCacheOnSyncSemcache(AsyncCacheTestSuite):
    @pytest.fixture
    def cache(self, make_cache) -> BaseCache:
        return SemcacheLangChainCache(make_cache())


class TestAsyncCache(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, sqlite_url, hashing_embedder, clock):
        config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(similarity_threshold=0.8, verifier=None))
        async with AsyncSemanticCache(config, timer=clock) as c:
            yield SemcacheLangChainCache(c)


def test_clear_only_removes_the_adapters_namespace(make_cache) -> None:
    cache = make_cache()
    cache.set("kept", "value")
    lc = SemcacheLangChainCache(cache)
    lc.update("p", "llm", [Generation(text="g")])
    lc.clear()
    assert lc.lookup("p", "llm") is None
    assert cache.get("kept").value == "value"


def test_llm_string_is_scope(make_cache) -> None:
    lc = SemcacheLangChainCache(make_cache())
    lc.update("p", "model=a temperature=0", [Generation(text="a")])
    assert lc.lookup("p", "model=a temperature=1") is None
    assert lc.lookup("p", "model=a temperature=0") == [Generation(text="a")]


def test_chat_model_uses_the_cache(make_cache) -> None:
    cache = make_cache()
    lc = SemcacheLangChainCache(cache)
    model = FakeListChatModel(responses=["first", "second", "third"], cache=lc)
    msgs = [SystemMessage("Be terse."), HumanMessage("What is 2+2?")]
    a = model.invoke(msgs)
    b = model.invoke(msgs)
    assert isinstance(a, AIMessage) and a.content == b.content == "first"
    # another system prompt is another scope
    assert model.invoke([SystemMessage("Be verbose."), HumanMessage("What is 2+2?")]).content == "second"
    # the stored prompt is the last user turn, matched like any chat request
    entry = cache.get_entry(lc._request(_serialised(msgs), _llm_string(model)).key)
    assert entry.prompt == "What is 2+2?"
    assert cache.stats()["hits"] == 1


async def test_chat_model_async_with_usage(sqlite_url, hashing_embedder) -> None:
    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(verifier=None))
    async with AsyncSemanticCache(config) as cache:
        lc = SemcacheLangChainCache(cache)
        lc_gen = ChatGeneration(
            message=AIMessage("4", usage_metadata={"input_tokens": 7, "output_tokens": 1, "total_tokens": 8})
        )
        await lc.aupdate("p", "llm", [lc_gen])
        assert await lc.alookup("p", "llm") == [lc_gen]
        assert cache.stats()["saved_tokens"] == 8
        model = FakeListChatModel(responses=["x", "y"], cache=lc)
        assert (await model.ainvoke("hello")).content == "x"
        assert (await model.ainvoke("hello")).content == "x"


def test_llm_uses_the_cache(make_cache) -> None:
    lc = SemcacheLangChainCache(make_cache())
    llm = FakeListLLM(responses=["one", "two"], cache=lc)
    assert llm.invoke("Tell me a joke") == "one"
    assert llm.invoke("Tell me a joke") == "one"
    assert llm.invoke("Tell me a different joke entirely about cats") == "two"


def _serialised(msgs: list) -> str:
    from langchain_core.load import dumps

    return dumps(msgs)


def _llm_string(model: FakeListChatModel) -> str:
    return model._get_llm_string()


def test_other_generation_types_round_trip(make_cache) -> None:
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    lc = SemcacheLangChainCache(make_cache())
    gens = [ChatGenerationChunk(message=AIMessageChunk("partial")), ChatGeneration(message=AIMessage("whole"))]
    lc.update("p", "llm", gens)
    assert lc.lookup("p", "llm") == gens


async def test_async_cache_is_used_only_through_its_awaitable_api(sqlite_url, hashing_embedder, monkeypatch) -> None:
    def reach_in(self):
        raise AssertionError("the adapter reached into AsyncSemanticCache.sync")

    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(verifier=None))
    async with AsyncSemanticCache(config) as cache:
        monkeypatch.setattr(AsyncSemanticCache, "sync", property(reach_in))
        lc = SemcacheLangChainCache(cache)
        await lc.aupdate("p", "llm", [Generation(text="g")])
        assert await lc.alookup("p", "llm") == [Generation(text="g")]
        await lc.aclear()
        assert await lc.alookup("p", "llm") is None


def test_sync_api_on_an_async_cache_outside_an_event_loop(sqlite_url, hashing_embedder) -> None:
    import asyncio

    config = CacheConfig(sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=Policy(verifier=None))
    cache = AsyncSemanticCache(config)
    asyncio.run(cache.open())
    try:
        lc = SemcacheLangChainCache(cache)
        lc.update("p", "llm", [Generation(text="g")])
        assert lc.lookup("p", "llm") == [Generation(text="g")]
        lc.clear()
        assert lc.lookup("p", "llm") is None
    finally:
        asyncio.run(cache.aclose())
