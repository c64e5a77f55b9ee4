"""Two sidecar replicas sharing Redis (L2) and one SQL database (L3), as in production: an entry
stored through one is served by the other, an invalidation through one reaches the other's L1 and
index, tenants stay apart, and /readyz reports the Redis tier."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process, server_config

pytestmark = pytest.mark.redis


async def _eventually(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def replicas(tmp_path, redis_url, key_prefix):
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                in_process(
                    create_app(
                        server_config(tmp_path, redis_url=redis_url, redis_prefix=key_prefix)
                    )
                )
            )
            for _ in range(2)
        ]
        yield clients
        # leave Redis as we found it: only this test's keys, by its own prefix
        await clients[0].post("/v1/flush", headers=auth(ADMIN))


async def test_replicas_share_entries_and_invalidations(replicas):
    one, two = replicas
    r = await one.post(
        "/v1/entries",
        json={"prompt": "shared question", "value": "v1", "tags": ["t"]},
        headers=auth(TENANT_A),
    )
    assert r.status_code == 201
    hit = (
        await two.post("/v1/lookup", json={"prompt": "shared question"}, headers=auth(TENANT_A))
    ).json()
    assert hit["hit"] and hit["tier"] in ("l2", "l3") and hit["value"] == "v1"
    # now in two's L1 as well
    again = (
        await two.post("/v1/lookup", json={"prompt": "shared question"}, headers=auth(TENANT_A))
    ).json()
    assert again["tier"] == "l1"

    # a semantic hit on two needs the vector one published
    async def semantic_on_two() -> bool:
        r = await two.post(
            "/v1/lookup", json={"prompt": "Shared question?"}, headers=auth(TENANT_A)
        )
        return bool(r.json()["hit"])

    await _eventually(semantic_on_two)

    removed = (await one.post("/v1/invalidate", json={"tag": "t"}, headers=auth(TENANT_A))).json()[
        "removed"
    ]
    assert removed == 1

    async def gone_from_two() -> bool:
        r = await two.post("/v1/lookup", json={"prompt": "shared question"}, headers=auth(TENANT_A))
        return not r.json()["hit"]

    await _eventually(gone_from_two)


async def test_tenants_stay_apart_across_replicas(replicas):
    one, two = replicas
    await one.post(
        "/v1/entries", json={"prompt": "tenant question", "value": "A's"}, headers=auth(TENANT_A)
    )
    r = await two.post("/v1/lookup", json={"prompt": "tenant question"}, headers=auth(TENANT_B))
    assert r.json()["hit"] is False
    r = await two.post("/v1/invalidate", json={"prompt_pattern": "*"}, headers=auth(TENANT_B))
    assert r.json()["removed"] == 0
    r = await two.post("/v1/lookup", json={"prompt": "tenant question"}, headers=auth(TENANT_A))
    assert r.json()["value"] == "A's"


async def test_readyz_reports_redis(replicas):
    body = (await replicas[0].get("/readyz")).json()
    assert body["status"] == "ready" and body["tiers"] == {"l1": "ok", "l2": "ok", "l3": "ok"}


async def test_concurrent_misses_on_two_replicas_make_one_upstream_call(
    tmp_path, redis_url, key_prefix
):
    import openai

    from tests.upstream import StandInUpstream

    with StandInUpstream(delay_seconds=0.5) as up:
        cfg = server_config(
            tmp_path, redis_url=redis_url, redis_prefix=key_prefix, upstream_url=up.base_url
        )
        async with in_process(create_app(cfg)) as one, in_process(create_app(cfg)) as two:
            clients = [
                openai.AsyncOpenAI(
                    base_url="http://sidecar/v1", api_key=TENANT_A, http_client=h, max_retries=0
                )
                for h in (one, two)
            ]
            msgs = [{"role": "user", "content": "one question, two replicas"}]
            answers = await asyncio.gather(
                *(c.chat.completions.create(model="stand-in-1", messages=msgs) for c in clients)
            )
            assert up.calls == 1
            assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
            await one.post("/v1/flush", headers=auth(ADMIN))
