"""The sidecar with the real all-MiniLM-L6-v2 and the shipped pair verifier (the default
Policy): paraphrases hit, different questions miss, through the JSON API and through the
proxy with the ``openai`` client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from semcache.server.app import create_app
from tests._sidecar import TENANT_A, TENANT_B, auth, in_process, server_config
from tests.upstream import StandInUpstream

pytestmark = pytest.mark.model


PROMPT = "How do I reverse a list in Python?"
PARA = "How can I reverse a list in Python?"  # a paraphrase the verifier accepts, with a margin


def default_config(tmp_path, minilm, **kwargs):
    # the default Policy, as a user gets it: no cosine threshold, the shipped verifier
    return server_config(tmp_path, embedder=minilm, threshold=None, verifier="default", **kwargs)


@pytest.fixture
async def client(tmp_path, minilm):
    async with in_process(create_app(default_config(tmp_path, minilm))) as c:
        yield c


async def test_paraphrase_hits_and_different_questions_miss(client):
    body = {"prompt": PROMPT, "value": "Use reversed() or list.reverse()."}
    assert (await client.post("/v1/entries", json=body, headers=auth(TENANT_A))).status_code == 201

    async def look(prompt, token=TENANT_A):
        return (
            await client.post("/v1/lookup", json={"prompt": prompt}, headers=auth(token))
        ).json()

    hit = await look(PARA)
    assert hit["hit"] and hit["kind"] == "semantic"
    assert hit["value"] == "Use reversed() or list.reverse()." and hit["matched_prompt"] == PROMPT
    explained = (
        await client.post("/v1/explain", json={"prompt": PARA}, headers=auth(TENANT_A))
    ).json()
    assert explained["verifier"] == "semcache-pair-verifier-1"
    assert hit["verifier_score"] == pytest.approx(explained["verifier_score"], abs=1e-6)
    assert hit["verifier_score"] >= explained["verifier_threshold"]
    for other in ("How do I reverse a list in Java?", "What is the capital of France?"):
        assert (await look(other))["hit"] is False, other
    assert (await look(PARA, TENANT_B))["hit"] is False

    explained = (
        await client.post(
            "/v1/explain", json={"prompt": "How do I sort a list in Python?"}, headers=auth(TENANT_A)
        )
    ).json()
    assert explained["decision"] == "miss" and explained["candidates"][0]["decision"] != "hit"


async def test_concurrent_semantic_lookups_are_batched(client):
    await client.post(
        "/v1/entries",
        json={"prompt": "What time does the store open?", "value": "9am"},
        headers=auth(TENANT_A),
    )
    phrasings = [
        "When does the store open?",
        "what time does the shop open",
        "What time does the store open today?",
    ]
    rs = await asyncio.gather(
        *(
            client.post("/v1/lookup", json={"prompt": p}, headers=auth(TENANT_A))
            for p in phrasings * 4
        )
    )
    assert all(r.status_code == 200 for r in rs)
    metrics = (await client.get("/metrics")).text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("semcache_embedding_batch_size_count")
    )
    assert count < 12  # 12 lookups, fewer embedding calls


async def test_openai_client_gets_a_semantic_hit_through_the_proxy(tmp_path, minilm):
    with StandInUpstream(delay_seconds=0.01) as up:
        cfg = default_config(tmp_path, minilm, upstream_url=up.base_url)
        async with in_process(create_app(cfg)) as http:
            client = openai.AsyncOpenAI(
                base_url="http://sidecar/v1", api_key=TENANT_A, http_client=http, max_retries=0
            )
            first = await client.chat.completions.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": PROMPT}],
            )
            raw = await client.chat.completions.with_raw_response.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": PARA}],
            )
            assert (
                raw.headers["x-semcache"] == "hit" and raw.headers["x-semcache-kind"] == "semantic"
            )
            assert raw.parse().choices[0].message.content == first.choices[0].message.content
            miss = await client.chat.completions.with_raw_response.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": "How do I reverse a list in Java?"}],
            )
            assert miss.headers["x-semcache"] == "miss"
            assert up.calls == 2
