"""LLM audits of semantic hits through the decorator: a sampled semantic hit is answered
from the cache at once, the function is called again in the background, the answers are
compared by the cache's verifier and the outcome kept as a source="llm" label.

Hashing embedder, L1 + SQLite, fake verifiers (callables) that tell a read-path pair
(two prompts) from an audit pair (two answers). Audits are waited for with
``cache.audits.join()`` and events, never sleeps."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from semcache import AsyncSemanticCache, CacheConfig, ConfigurationError, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.audit import MAX_AUDIT_CHARS, clean_text
from semcache.feedback import load_labels
from semcache.openai_compat import answer_text
from semcache.server.config import ServerConfig

E1 = "how do I reverse a list in python"
#: Nearest E1 with the hashing embedder (0.91): a semantic hit.
Q = "how do I reverse a python list"
#: Another paraphrase of E1 (0.76).
Q2 = "how to reverse a python list"
#: Far from E1: a miss.
OTHER = "what is the boiling point of water at sea level"

WAIT = 10.0


class Judge:
    """A fake verifier: prompt pairs always pass (so paraphrases hit); an answer pair
    (texts starting ``ANSWER``) scores ``agree`` when both are equal, else ``disagree``."""

    def __init__(self, *, agree: float = 0.9, disagree: float = 0.1) -> None:
        self.agree, self.disagree = agree, disagree
        self.answer_pairs: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, pairs: list[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            if a.startswith(("ANSWER", "{")) or b.startswith(("ANSWER", "{")):
                with self.lock:
                    self.answer_pairs.append((a, b))
                out.append(self.agree if a == b else self.disagree)
            else:
                out.append(0.99)
        return out


class LLM:
    """A fake LLM: answers ``ANSWER: <reply>``; ``reply`` may be changed between calls;
    ``gate`` (an event), when set up, makes every call after the first wait for it."""

    def __init__(self, reply: str = "use reversed()") -> None:
        self.reply = reply
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_after_first = False

    def __call__(self, prompt: str) -> str:
        with self.lock:
            self.calls.append(prompt)
            n = len(self.calls)
        if n > 1:
            self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(WAIT), "the test never opened the gate"
            if self.fail_after_first:
                raise RuntimeError("the LLM is down")
        return f"ANSWER: {self.reply}"


def policy(**kw: Any) -> Policy:
    base: dict[str, Any] = dict(
        similarity_threshold=0.75,
        guards=(),
        verifier=Judge(),
        verifier_threshold=0.5,
        audit_rate=1.0,
        log_poll_seconds=None,
        sweep_interval_seconds=None,
    )
    base.update(kw)
    return Policy(**base)


@pytest.fixture
def make(clock, sqlite_url, hashing_embedder) -> Iterator[Any]:
    made: list[SemanticCache] = []

    def build(**kw: Any) -> SemanticCache:
        cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=policy(**kw))
        c = SemanticCache(cfg, timer=clock).open()
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


def llm_labels(cache: Any) -> list[dict[str, Any]]:
    return [row for row in load_labels(cache) if row["source"] == "llm"]


def audits(cache: Any) -> dict[str, Any]:
    return cache.stats()["audits"]


# -- when an audit runs ------------------------------------------------------------


def test_rate_zero_never_calls_the_llm_again(make) -> None:
    cache = make(audit_rate=0.0)
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    for _ in range(5):
        assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    assert llm.calls == [E1]
    assert audits(cache)["started"] == 0 and llm_labels(cache) == []


def test_rate_one_audits_every_semantic_hit_and_nothing_else(make) -> None:
    cache = make()
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)  # a miss: the call itself
    ask(E1)  # an exact hit: no audit
    ask(OTHER)  # another miss
    assert cache.audits.join(WAIT) and len(llm.calls) == 2
    ask(Q)  # semantic hits: one audit each
    assert cache.audits.join(WAIT)
    ask(Q2)
    assert cache.audits.join(WAIT)
    assert llm.calls == [E1, OTHER, Q, Q2]  # the audit asks the request, not the cached prompt
    a = audits(cache)
    assert a["started"] == 2 and a["agreed"] == 2 and a["disagreed"] == a["failed"] == a["dropped"] == 0
    assert cache.stats()["hits_by"].get("l1_semantic", 0) + cache.stats()["hits_by"].get("l3_semantic", 0) >= 2


def test_the_sampler_decides_which_hits_are_audited(make) -> None:
    cache = make(audit_rate=0.5)
    draws = iter([0.7, 0.2, 0.5, 0.49])
    cache.audits.sampler = lambda: next(draws)
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    for _ in range(4):
        ask(Q)
        assert cache.audits.join(WAIT)
    assert len(llm.calls) == 1 + 2  # 0.2 and 0.49 are under the rate
    assert audits(cache)["started"] == 2


def test_a_seeded_sampler_is_reproducible(make) -> None:
    counts = []
    for _ in range(2):
        cache = make(audit_rate=0.3)
        cache.flush()
        cache.audits.sampler = random.Random(11).random
        llm = LLM()
        ask = cache.cached(llm)
        ask(E1)
        for _ in range(20):
            ask(Q)
            assert cache.audits.join(WAIT)
        counts.append(len(llm.calls) - 1)
    rng = random.Random(11)
    expected = sum(1 for _ in range(20) if rng.random() < 0.3)
    assert counts == [expected, expected] and 0 < expected < 20


# -- the label ----------------------------------------------------------------------


def test_an_agreeing_answer_is_a_correct_llm_label(make) -> None:
    cache = make()
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    rows = llm_labels(cache)
    assert len(rows) == 1
    row = rows[0]
    assert row["correct"] is True and row["source"] == "llm"
    assert row["prompt"] == Q and row["cached_prompt"] == E1
    assert row["entry_id"] == cache.request(E1, params={"__fn__": ask.cache_logic.name}).key
    judge = cache.config.policy.verifier
    assert judge.answer_pairs == [("ANSWER: use reversed()", "ANSWER: use reversed()")]  # (fresh, cached)
    assert audits(cache)["agreed"] == 1 and cache.stats()["feedback"]["correct"] == 1


def test_a_disagreeing_answer_is_a_wrong_label_that_blocks_nothing_by_default(make) -> None:
    cache = make()
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    llm.reply = "use sorted()"
    assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    rows = llm_labels(cache)
    assert [(r["correct"], r["prompt"], r["source"]) for r in rows] == [(False, Q, "llm")]
    assert cache.stats()["feedback"]["blocked_pairs"] == 0
    # the pairing is still served
    assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    a = audits(cache)
    assert a["disagreed"] == 2 and a["disagreement_rate"] == 1.0
    # and nothing was invalidated or overwritten
    hit = cache.get(E1, params={"__fn__": ask.cache_logic.name})
    assert hit is not None and hit.value == "ANSWER: use reversed()"


def test_a_disagreement_blocks_the_pairing_with_audit_block(make) -> None:
    cache = make(audit_block=True)
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    llm.reply = "use sorted()"
    assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    assert cache.stats()["feedback"]["blocked_pairs"] == 1
    scope = {"__fn__": ask.cache_logic.name}
    assert cache.get(Q, params=scope) is None  # that pairing is never served again
    hit = cache.get(Q2, params=scope)  # other prompts still are
    assert hit is not None and hit.kind == "semantic"
    assert cache.get(E1, params=scope) is not None  # the entry itself stays


def test_an_agreement_never_blocks_with_audit_block(make) -> None:
    cache = make(audit_block=True)
    ask = cache.cached(LLM())
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    assert cache.stats()["feedback"]["blocked_pairs"] == 0
    assert cache.get(Q, params={"__fn__": ask.cache_logic.name}) is not None


def test_the_agreement_threshold_is_configurable(make) -> None:
    cache = make(verifier=Judge(agree=0.6), audit_agreement=0.7)
    ask = cache.cached(LLM())
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    assert [r["correct"] for r in llm_labels(cache)] == [False]  # 0.6 < 0.7


def test_without_a_verifier_an_audit_is_counted_and_keeps_no_label(make) -> None:
    cache = make(verifier=None, verifier_threshold=None)
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    assert len(llm.calls) == 2
    a = audits(cache)
    assert a["started"] == 1 and a["unjudged"] == 1 and a["agreed"] == a["disagreed"] == 0
    assert llm_labels(cache) == []


# -- the caller comes first ------------------------------------------------------------


def test_the_caller_is_answered_before_the_audit_finishes(make) -> None:
    cache = make()
    llm = LLM()
    llm.gate = threading.Event()
    ask = cache.cached(llm)
    ask(E1)
    assert ask(Q) == "ANSWER: use reversed()"  # returned while the audit's call is held
    assert llm.entered.wait(WAIT)
    assert cache.audits.running == 1 and llm_labels(cache) == []
    assert not cache.audits.join(0.01)
    llm.gate.set()
    assert cache.audits.join(WAIT)
    assert cache.audits.running == 0 and len(llm_labels(cache)) == 1


def test_a_failing_audit_call_is_counted_and_never_reaches_the_caller(make) -> None:
    cache = make()
    llm = LLM()
    llm.fail_after_first = True
    ask = cache.cached(llm)
    ask(E1)
    assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    a = audits(cache)
    assert a["started"] == 1 and a["failed"] == 1 and a["agreed"] == a["disagreed"] == 0
    assert llm_labels(cache) == []


def test_an_unusable_fresh_answer_is_a_failed_audit(make) -> None:
    cache = make()
    answers = iter(["ANSWER: use reversed()", "   "])
    ask = cache.cached(lambda prompt: next(answers))
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    assert audits(cache)["failed"] == 1 and llm_labels(cache) == []


def test_a_failing_verifier_is_a_failed_audit(make) -> None:
    def verifier(pairs):
        if any(a.startswith("ANSWER") for a, _ in pairs):
            raise RuntimeError("verifier down")
        return [0.99] * len(pairs)

    cache = make(verifier=verifier)
    ask = cache.cached(LLM())
    ask(E1)
    assert ask(Q) == "ANSWER: use reversed()"
    assert cache.audits.join(WAIT)
    assert audits(cache)["failed"] == 1 and llm_labels(cache) == []


def test_a_full_audit_pool_drops_and_counts(make) -> None:
    cache = make(audit_concurrency=1)
    llm = LLM()
    llm.gate = threading.Event()
    ask = cache.cached(llm)
    ask(E1)
    ask(Q)
    assert llm.entered.wait(WAIT)
    ask(Q)  # one audit already runs: dropped
    ask(Q2)
    assert audits(cache)["dropped"] == 2 and audits(cache)["started"] == 1
    llm.gate.set()
    assert cache.audits.join(WAIT)
    assert len(llm.calls) == 2
    ask(Q)  # room again
    assert cache.audits.join(WAIT)
    assert audits(cache)["started"] == 2 and len(llm.calls) == 3


def test_audits_after_close_start_nothing(make) -> None:
    cache = make()
    llm = LLM()
    llm.gate = threading.Event()
    ask = cache.cached(llm)
    ask(E1)
    ask(Q)
    assert llm.entered.wait(WAIT)
    cache.close()
    llm.gate.set()
    assert cache.audits.join(WAIT)
    assert audits(cache)["dropped"] == 1  # it finished after close: nothing recorded
    assert not cache.audits.wants(None)


# -- what is compared ------------------------------------------------------------------


def test_the_audit_repeats_the_arguments_as_they_were(make) -> None:
    cache = make()
    seen: list[list[dict[str, str]]] = []
    gate, entered = threading.Event(), threading.Event()

    @cache.cached(model="m")
    def chat(messages: list[dict[str, str]], model: str = "m") -> str:
        seen.append([dict(m) for m in messages])
        if len(seen) > 1:
            entered.set()
            assert gate.wait(WAIT)
        return "ANSWER: same"

    chat([{"role": "user", "content": E1}])
    msgs = [{"role": "user", "content": Q}]
    assert chat(msgs) == "ANSWER: same"
    msgs.append({"role": "assistant", "content": "ANSWER: same"})  # the caller carries on
    msgs[0]["content"] = "changed"
    assert entered.wait(WAIT)
    gate.set()
    assert cache.audits.join(WAIT)
    assert seen[1] == [{"role": "user", "content": Q}]


def test_non_text_answers_are_compared_as_json(make) -> None:
    judge = Judge()
    cache = make(verifier=judge)
    ask = cache.cached(lambda prompt: {"b": 2, "a": [1, "x"]})
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    assert judge.answer_pairs == [('{"a":[1,"x"],"b":2}', '{"a":[1,"x"],"b":2}')]
    assert [r["correct"] for r in llm_labels(cache)] == [True]


def test_long_answers_are_cut_before_the_verifier(make) -> None:
    judge = Judge()
    cache = make(verifier=judge)
    long = "ANSWER: " + "word " * 5000
    ask = cache.cached(lambda prompt: long)
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    (a, b), = judge.answer_pairs
    assert a == b and len(a) <= MAX_AUDIT_CHARS


def test_a_streamed_hit_is_audited_by_reading_the_fresh_stream_to_its_end(make) -> None:
    judge = Judge()
    cache = make(verifier=judge)
    calls = []

    @cache.cached
    def tokens(prompt: str) -> Iterator[str]:
        calls.append(prompt)
        yield from ["ANSWER", ": use ", "reversed()"]

    assert "".join(tokens(E1)) == "ANSWER: use reversed()"
    assert "".join(tokens(Q)) == "ANSWER: use reversed()"  # a replayed stream
    assert cache.audits.join(WAIT)
    assert calls == [E1, Q]
    assert judge.answer_pairs == [("ANSWER: use reversed()", "ANSWER: use reversed()")]
    assert [r["correct"] for r in llm_labels(cache)] == [True]


def test_answer_text_of_completions_streams_and_values() -> None:
    completion = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    }
    assert answer_text(completion) == "Paris."
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Par"}}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "is."}, "finish_reason": "stop"}]},
    ]
    assert answer_text(chunks, stream=True) == "Paris."
    tool = {"choices": [{"message": {"content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]}}]}
    assert answer_text(tool) == '{"tool_calls":[{"function":{"name":"f"},"id":"1"}]}'
    assert answer_text({"choices": [{"text": "old style"}]}) == "old style"
    assert answer_text(b"bytes \xff") == "bytes \ufffd"
    assert answer_text(["a", b"b"], stream=True) == "ab"
    assert answer_text([1, 2]) == "[1,2]"
    assert clean_text("a\x00b\ud800 ") == "ab?"


# -- async -------------------------------------------------------------------------------


@pytest.fixture
async def amake(clock, sqlite_url, hashing_embedder) -> AsyncIterator[Any]:
    made: list[AsyncSemanticCache] = []

    async def build(**kw: Any) -> AsyncSemanticCache:
        cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=sqlite_url), embedder=hashing_embedder, policy=policy(**kw))
        c = await AsyncSemanticCache(cfg, timer=clock).open()
        made.append(c)
        return c

    yield build
    for c in made:
        await c.aclose()


async def test_async_hits_are_audited_in_a_task_after_the_caller_is_answered(amake) -> None:
    cache = await amake()
    gate, entered = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    @cache.cached
    async def ask(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) > 1:
            entered.set()
            await gate.wait()
        return "ANSWER: use sorted()" if len(calls) > 1 else "ANSWER: use reversed()"

    await ask(E1)
    assert await ask(Q) == "ANSWER: use reversed()"
    await asyncio.wait_for(entered.wait(), WAIT)
    assert cache.audits.running == 1
    gate.set()
    assert await cache.audits.ajoin(WAIT)
    rows = await asyncio.to_thread(llm_labels, cache)
    assert [(r["correct"], r["prompt"]) for r in rows] == [(False, Q)]
    a = cache.stats()["audits"]
    assert a["started"] == 1 and a["disagreed"] == 1
    assert cache.stats()["feedback"]["blocked_pairs"] == 0


async def test_async_rate_zero_and_exact_hits_never_call_again(amake) -> None:
    cache = await amake(audit_rate=0.0)
    calls: list[str] = []

    @cache.cached
    async def ask(prompt: str) -> str:
        calls.append(prompt)
        return "ANSWER: x"

    await ask(E1)
    await ask(E1)
    await ask(Q)
    assert await cache.audits.ajoin(WAIT)
    assert calls == [E1] and cache.stats()["audits"]["started"] == 0


async def test_async_failing_audit_and_async_streams(amake) -> None:
    cache = await amake()
    calls: list[str] = []

    @cache.cached
    async def ask(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) > 1:
            raise RuntimeError("the LLM is down")
        return "ANSWER: x"

    await ask(E1)
    assert await ask(Q) == "ANSWER: x"
    assert await cache.audits.ajoin(WAIT)
    assert cache.stats()["audits"]["failed"] == 1

    @cache.cached
    async def tokens(prompt: str) -> AsyncIterator[str]:
        yield "ANSWER"
        yield ": y"

    assert [t async for t in tokens(E1)] == ["ANSWER", ": y"]
    assert [t async for t in tokens(Q)] == ["ANSWER", ": y"]
    assert await cache.audits.ajoin(WAIT)
    assert cache.stats()["audits"]["agreed"] == 1


# -- the real verifier -----------------------------------------------------------------


def test_with_the_default_verifier(make) -> None:
    pytest.importorskip("onnxruntime")
    from semcache.verify.model import DefaultVerifier

    # verifier_threshold=0: the read path lets the toy embedder's paraphrase through;
    # the audit scores the two answers with the shipped model
    cache = make(verifier=DefaultVerifier(), verifier_threshold=0.0)
    answers = iter(["The capital of France is Paris.", "The capital of France is Paris.", "15% of 300 is 45."])
    ask = cache.cached(lambda prompt: next(answers))
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    ask(Q2)
    assert cache.audits.join(WAIT)
    assert {r["prompt"]: r["correct"] for r in llm_labels(cache)} == {Q: True, Q2: False}


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"audit_rate": -0.1},
        {"audit_rate": 1.5},
        {"audit_rate": True},
        {"audit_rate": "0.1"},
        {"audit_agreement": 2.0},
        {"audit_block": 1},
        {"audit_concurrency": 0},
    ],
)
def test_bad_audit_settings_are_refused(kw) -> None:
    with pytest.raises(ConfigurationError):
        Policy(**kw)


def test_audit_settings_from_the_environment() -> None:
    p = CacheConfig.from_env(environ={"SEMCACHE_AUDIT_RATE": "0.01", "SEMCACHE_AUDIT_AGREEMENT": "0.7", "SEMCACHE_AUDIT_BLOCK": "1"}).policy
    assert (p.audit_rate, p.audit_agreement, p.audit_block) == (0.01, 0.7, True)
    p = CacheConfig.from_env(environ={}).policy
    assert (p.audit_rate, p.audit_agreement, p.audit_block, p.audit_concurrency) == (0.0, 0.5, False, 4)
    with pytest.raises(ConfigurationError):
        CacheConfig.from_env(environ={"SEMCACHE_AUDIT_RATE": "2"})
    with pytest.raises(ConfigurationError):
        CacheConfig.from_env(environ={"SEMCACHE_AUDIT_BLOCK": "maybe"})
    s = ServerConfig.load(environ={"SEMCACHE_AUDIT_RATE": "0.25", "SEMCACHE_AUDIT_BLOCK": "true"})
    assert s.cache.policy.audit_rate == 0.25 and s.cache.policy.audit_block is True
    assert s.describe()["audit_rate"] == 0.25
    assert ServerConfig.load(environ={}, audit_rate=0.5).cache.policy.audit_rate == 0.5


def test_stats_and_prometheus_carry_the_audits(make) -> None:
    from semcache.contrib.prometheus import CacheMetrics

    cache = make()
    llm = LLM()
    ask = cache.cached(llm)
    ask(E1)
    ask(Q)
    assert cache.audits.join(WAIT)
    llm.reply = "other"
    ask(Q2)
    assert cache.audits.join(WAIT)
    a = audits(cache)
    assert a["started"] == 2 and a["agreed"] == 1 and a["disagreed"] == 1 and a["running"] == 0
    assert a["disagreement_rate"] == 0.5 and 0.5 < a["disagreement_rate_upper_95"] <= 1.0
    text = CacheMetrics(cache).render().decode()
    assert "semcache_audits_started_total 2.0" in text
    assert "semcache_audits_agreed_total 1.0" in text
    assert "semcache_audits_disagreed_total 1.0" in text
    assert "semcache_audits_dropped_total 0.0" in text
    assert "semcache_audits_failed_total 0.0" in text
    assert "semcache_audit_disagreement_rate 0.5" in text
