"""LLM audits through the proxy: a sampled semantic hit is answered from the cache at
once, the same request goes upstream in the background (unstreamed, with the caller's
own credentials), the answers are compared by a fake verifier and the outcome kept as
a source="llm" label; the fresh answer is never stored.

In process (the app over httpx.ASGITransport), the stand-in upstream of tests/upstream.py
on a loopback port or an httpx.MockTransport; audits are awaited with
``cache.audits.ajoin()`` and events, never sleeps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from semcache import CacheConfig, MemoryConfig, Policy, SQLConfig
from semcache.embedders import HashingEmbedder
from semcache.feedback import load_labels
from semcache.server.app import create_app
from semcache.server.config import ServerConfig
from tests._sidecar import ADMIN, TENANT_A, auth, in_process
from tests.upstream import StandInUpstream

Q = [{"role": "user", "content": "What is the capital of France?"}]
#: A semantic hit on Q with the hashing embedder.
NEAR = [{"role": "user", "content": "what is the capital of france"}]
WAIT = 10.0


class Judge:
    """Prompt pairs pass (so NEAR hits Q); an answer pair scores ``score(fresh, cached)``."""

    def __init__(self, score: Any = lambda a, b: 0.9 if a == b else 0.1) -> None:
        self.score = score
        self.answer_pairs: list[tuple[str, str]] = []

    def __call__(self, pairs: list[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            if a.lower().startswith("what is"):
                out.append(0.99)
            else:
                self.answer_pairs.append((a, b))
                out.append(self.score(a, b))
        return out


def config(tmp_path: Path, upstream_url: str, *, judge: Any = None, api_key: str | None = None, **policy: Any) -> ServerConfig:
    kw: dict[str, Any] = dict(
        similarity_threshold=0.8,
        verifier=judge if judge is not None else Judge(),
        verifier_threshold=0.5,
        audit_rate=1.0,
        log_poll_seconds=None,
        sweep_interval_seconds=None,
    )
    kw.update(policy)
    cache = CacheConfig(
        memory=MemoryConfig(),
        sql=SQLConfig(url=f"sqlite:///{tmp_path}/sidecar.db"),
        embedder=HashingEmbedder(64),
        policy=Policy(**kw),
    )
    return ServerConfig(
        cache=cache,
        tokens={TENANT_A: "tenant-a"},
        admin_token=ADMIN,
        upstream_url=upstream_url,
        upstream_api_key=api_key,
    )


def own_key(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    """A caller with its own upstream key (the semcache token in X-Semcache-Token)."""
    return openai.AsyncOpenAI(
        base_url="http://sidecar/v1",
        api_key=key,
        http_client=client,
        max_retries=0,
        default_headers={"x-semcache-token": TENANT_A},
    )


async def create(oai: openai.AsyncOpenAI, messages: list[dict[str, str]], **kw: Any) -> tuple[Any, Any]:
    raw = await oai.chat.completions.with_raw_response.create(model="stand-in-1", messages=messages, **kw)
    return raw.headers, raw.parse()


async def llm_labels(cache: Any) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(load_labels, cache)
    return [r for r in rows if r["source"] == "llm"]


@pytest.fixture(scope="module")
def upstream():
    with StandInUpstream(delay_seconds=0.0, chunk_delay_seconds=0.0) as up:
        yield up


async def test_a_semantic_hit_is_audited_with_the_callers_own_key_and_nothing_is_overwritten(tmp_path, upstream):
    upstream.reset()
    app = create_app(config(tmp_path, upstream.base_url))
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        h, first = await create(own_key(client, "sk-one"), Q)
        assert h["x-semcache"] == "miss" and upstream.calls == 1
        cached = first.choices[0].message.content
        h, near = await create(own_key(client, "sk-two"), NEAR)
        assert h["x-semcache"] == "hit" and h["x-semcache-kind"] == "semantic"
        assert near.choices[0].message.content == cached
        assert await cache.audits.ajoin(WAIT)
        assert upstream.calls == 2
        # the audit went out with the caller's key, not the one that stored the entry
        assert upstream.headers[0]["authorization"] == "Bearer sk-one"
        assert upstream.headers[1]["authorization"] == "Bearer sk-two"
        assert "x-semcache-token" not in upstream.headers[1]
        assert upstream.requests[1]["messages"] == NEAR and not upstream.requests[1].get("stream")
        # the stand-in answers "answer 2: ..." now: the answers differ, so a wrong label
        judge = app.state.sidecar.config.cache.policy.verifier
        audited = [p for p in judge.answer_pairs if p[0].startswith("answer")]
        assert audited == [(f"answer 2: {NEAR[0]['content']}", cached)]
        rows = await llm_labels(cache)
        assert [(r["correct"], r["prompt"], r["cached_prompt"], r["namespace"]) for r in rows] == [
            (False, NEAR[0]["content"], Q[0]["content"], "tenant-a")
        ]
        # not blocked, not overwritten: the same request still hits the stored answer
        h, again = await create(own_key(client, "sk-two"), NEAR)
        assert h["x-semcache-kind"] == "semantic" and again.choices[0].message.content == cached
        assert await cache.audits.ajoin(WAIT)
        h, exact = await create(own_key(client, "sk-one"), Q)
        assert h["x-semcache-kind"] == "exact" and exact.choices[0].message.content == cached
        entries = (await client.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"]
        assert len(entries) == 1
        assert upstream.calls == 3  # the miss and two audits; the exact hit asked nothing
        stats = (await client.get("/v1/stats", headers=auth(ADMIN))).json()
        assert stats["audits"]["started"] == 2 and stats["audits"]["disagreed"] == 2
        assert stats["feedback"]["blocked_pairs"] == 0
        metrics = (await client.get("/metrics")).text
        assert "semcache_audits_disagreed_total 2.0" in metrics


async def test_a_streamed_hit_is_audited_with_an_unstreamed_call(tmp_path, upstream):
    upstream.reset()
    judge = Judge(lambda a, b: 0.95)
    app = create_app(config(tmp_path, upstream.base_url, judge=judge, api_key="sk-sidecar"))
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        oai = openai.AsyncOpenAI(base_url="http://sidecar/v1", api_key=TENANT_A, http_client=client, max_retries=0)
        await create(oai, Q)
        stream = await oai.chat.completions.create(
            model="stand-in-1", messages=NEAR, stream=True, stream_options={"include_usage": True}
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "answer 1: What is the capital of France?"
        assert await cache.audits.ajoin(WAIT)
        assert upstream.calls == 2
        audit = upstream.requests[1]
        assert "stream" not in audit and "stream_options" not in audit
        assert upstream.headers[1]["authorization"] == "Bearer sk-sidecar"  # as a miss would
        assert upstream.headers[1]["accept"] == "application/json"
        assert [r["correct"] for r in await llm_labels(cache)] == [True]


async def test_exact_hits_misses_and_rate_zero_are_never_audited(tmp_path, upstream):
    upstream.reset()
    app = create_app(config(tmp_path, upstream.base_url, audit_rate=0.0))
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        oai = own_key(client, "sk-one")
        await create(oai, Q)
        await create(oai, Q)
        await create(oai, NEAR)
        assert await cache.audits.ajoin(WAIT)
        assert upstream.calls == 1 and cache.stats()["audits"]["started"] == 0
    upstream.reset()
    (tmp_path / "b").mkdir()
    app = create_app(config(tmp_path / "b", upstream.base_url))
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        oai = own_key(client, "sk-one")
        await create(oai, Q)  # a miss
        await create(oai, Q)  # an exact hit
        await create(oai, [{"role": "user", "content": "How tall is Mount Everest?"}])  # a miss
        assert await cache.audits.ajoin(WAIT)
        assert upstream.calls == 2 and cache.stats()["audits"]["started"] == 0
        await create(oai, NEAR)
        assert await cache.audits.ajoin(WAIT)
        assert upstream.calls == 3 and cache.stats()["audits"]["started"] == 1


def _completion(content: str, model: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


async def test_the_caller_is_answered_before_the_audit_and_a_failing_audit_is_counted(tmp_path):
    seen: list[httpx.Request] = []
    gate, entered = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        if len(seen) == 1:
            return httpx.Response(200, json=_completion("Paris.", body["model"]))
        entered.set()
        await gate.wait()
        return httpx.Response(500, json={"error": {"message": "upstream down"}})

    app = create_app(
        config(tmp_path, "http://upstream.test/v1"), upstream_transport=httpx.MockTransport(handler)
    )
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        oai = own_key(client, "sk-caller")
        await create(oai, Q)
        h, near = await create(oai, NEAR)  # answered while the audit's upstream call is held
        assert h["x-semcache-kind"] == "semantic" and near.choices[0].message.content == "Paris."
        await asyncio.wait_for(entered.wait(), WAIT)
        assert cache.audits.running == 1
        assert seen[1].headers["authorization"] == "Bearer sk-caller"
        gate.set()
        assert await cache.audits.ajoin(WAIT)
        a = cache.stats()["audits"]
        assert a["started"] == 1 and a["failed"] == 1 and a["agreed"] == a["disagreed"] == 0
        assert await llm_labels(cache) == []
        h, again = await create(oai, NEAR)  # the caller never sees the audit's failure
        assert again.choices[0].message.content == "Paris."
        gate.set()
        assert await cache.audits.ajoin(WAIT)


async def test_an_agreeing_audit_with_audit_block_blocks_nothing_and_a_disagreeing_one_does(tmp_path):
    answers = iter(["Paris.", "Paris.", "Lyon."])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_completion(next(answers), json.loads(request.content)["model"]))

    app = create_app(
        config(tmp_path, "http://upstream.test/v1", audit_block=True),
        upstream_transport=httpx.MockTransport(handler),
    )
    async with in_process(app) as client:
        cache = app.state.sidecar.cache
        oai = own_key(client, "sk-caller")
        await create(oai, Q)
        h, _ = await create(oai, NEAR)  # audited: "Paris." again, agrees
        assert await cache.audits.ajoin(WAIT)
        h, _ = await create(oai, NEAR)  # still served; audited: "Lyon.", disagrees and blocks
        assert h["x-semcache-kind"] == "semantic"
        assert await cache.audits.ajoin(WAIT)
        assert sorted(r["correct"] for r in await llm_labels(cache)) == [False, True]
        assert cache.stats()["feedback"]["blocked_pairs"] == 1
        hit = await cache.get(messages=NEAR, model="stand-in-1", namespace="tenant-a")
        assert hit is None  # that pairing is no longer served
