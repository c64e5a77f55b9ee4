"""The sidecar with the real all-MiniLM-L6-v2: paraphrases hit, different questions miss, through the
JSON API and through the proxy with the ``openai`` client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from semcache.server.app import create_app
from tests._sidecar import TENANT_A, TENANT_B, auth, in_process, server_config
from tests.upstream import StandInUpstream

pytestmark = pytest.mark.model


@pytest.fixture
async def client(tmp_path, minilm):
    # the cache's default threshold, as a user gets it
    async with in_process(
        create_app(server_config(tmp_path, embedder=minilm, threshold=0.92))
    ) as c:
        yield c


async def test_paraphrase_hits_and_different_questions_miss(client):
    body = {"prompt": "How do I reset my password?", "value": "Use the 'Forgot password' link."}
    assert (await client.post("/v1/entries", json=body, headers=auth(TENANT_A))).status_code == 201

    async def look(prompt, token=TENANT_A):
        return (
            await client.post("/v1/lookup", json={"prompt": prompt}, headers=auth(token))
        ).json()

    hit = await look("how can I reset my password")
    assert hit["hit"] and hit["kind"] == "semantic" and hit["similarity"] >= 0.92
    assert (
        hit["value"] == "Use the 'Forgot password' link."
        and hit["matched_prompt"] == "How do I reset my password?"
    )
    for other in ("How do I delete my account?", "What is the capital of France?"):
        assert (await look(other))["hit"] is False, other
    assert (await look("how can I reset my password", TENANT_B))["hit"] is False

    explained = (
        await client.post(
            "/v1/explain", json={"prompt": "How do I change my username?"}, headers=auth(TENANT_A)
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
        cfg = server_config(tmp_path, embedder=minilm, threshold=0.92, upstream_url=up.base_url)
        async with in_process(create_app(cfg)) as http:
            client = openai.AsyncOpenAI(
                base_url="http://sidecar/v1", api_key=TENANT_A, http_client=http, max_retries=0
            )
            first = await client.chat.completions.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": "How do I reset my password?"}],
            )
            raw = await client.chat.completions.with_raw_response.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": "how can I reset my password"}],
            )
            assert (
                raw.headers["x-semcache"] == "hit" and raw.headers["x-semcache-kind"] == "semantic"
            )
            assert raw.parse().choices[0].message.content == first.choices[0].message.content
            miss = await client.chat.completions.with_raw_response.create(
                model="stand-in-1",
                messages=[{"role": "user", "content": "How do I delete my account?"}],
            )
            assert miss.headers["x-semcache"] == "miss"
            assert up.calls == 2
