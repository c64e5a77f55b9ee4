"""The shared production setup: two sidecar replicas on Redis (L2) and PostgreSQL (L3), configured
by URL exactly as ``semcache serve --redis-url … --sql-url …`` does."""

from __future__ import annotations

import asyncio

import pytest

from semcache.embedders import HashingEmbedder
from semcache.server.app import create_app
from semcache.server.config import ServerConfig
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def _config(redis_url: str, pg_url: str, prefix: str) -> ServerConfig:
    cfg = ServerConfig.load(
        environ={},
        redis_url=redis_url,
        redis_prefix=prefix,
        sql_url=pg_url,
        threshold=0.8,
        verifier="none",
        tokens={TENANT_A: "tenant-a", TENANT_B: "tenant-b"},
        admin_token=ADMIN,
    )
    # the toy embedder keeps this test about plumbing; the model has its own tests
    from dataclasses import replace

    return replace(cfg, cache=replace(cfg.cache, embedder=HashingEmbedder(64)))


async def test_two_replicas_on_redis_and_postgres(redis_url, pg_schema_url, key_prefix):
    cfg = _config(redis_url, pg_schema_url, key_prefix)
    assert cfg.cache.redis is not None and cfg.cache.sql is not None
    async with in_process(create_app(cfg)) as one, in_process(create_app(cfg)) as two:
        ready = (await one.get("/readyz")).json()
        assert ready["tiers"] == {"l1": "ok", "l2": "ok", "l3": "ok"}
        body = {"prompt": "How do refunds work?", "value": "30 days", "tags": ["faq"]}
        assert (await one.post("/v1/entries", json=body, headers=auth(TENANT_A))).status_code == 201
        hit = (
            await two.post(
                "/v1/lookup", json={"prompt": "How do refunds work?"}, headers=auth(TENANT_A)
            )
        ).json()
        assert hit["hit"] and hit["value"] == "30 days"
        miss = (
            await two.post(
                "/v1/lookup", json={"prompt": "How do refunds work?"}, headers=auth(TENANT_B)
            )
        ).json()
        assert miss["hit"] is False
        listed = (await two.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"]
        assert [e["prompt"] for e in listed] == ["How do refunds work?"]
        assert (
            await two.post("/v1/invalidate", json={"tag": "faq"}, headers=auth(TENANT_A))
        ).json()["removed"] == 1

        async def gone() -> bool:
            r = await one.post(
                "/v1/lookup", json={"prompt": "How do refunds work?"}, headers=auth(TENANT_A)
            )
            return not r.json()["hit"]

        for _ in range(100):
            if await gone():
                break
            await asyncio.sleep(0.05)
        assert await gone()
        await one.post("/v1/flush", headers=auth(ADMIN))

    # a new replica rebuilds its index from PostgreSQL at start
    async with in_process(create_app(cfg)) as first:
        await first.post(
            "/v1/entries", json={"prompt": "persisted question", "value": 1}, headers=auth(TENANT_A)
        )
    async with in_process(create_app(cfg)) as fresh:
        near = (
            await fresh.post(
                "/v1/lookup", json={"prompt": "Persisted question?"}, headers=auth(TENANT_A)
            )
        ).json()
        assert near["hit"] and near["kind"] == "semantic"
        await fresh.post("/v1/flush", headers=auth(ADMIN))
