"""Sidecar replicas on the pgvector index, with the real all-MiniLM-L6-v2 and the
shipped verifier: a paraphrase stored through one replica is found by another at once,
with no Redis and so no pub/sub message, and a replica started later serves it without
rebuilding anything."""

from __future__ import annotations

import pytest

from semcache.reindex import Reindexer
from semcache.server.app import create_app
from tests._sidecar import TENANT_A, TENANT_B, auth, in_process, server_config

pytestmark = [pytest.mark.model, pytest.mark.pgvector]

PROMPT = "How do I reverse a list in Python?"
PARA = "How can I reverse a list in Python?"
ANSWER = "Use reversed() or list.reverse()."


def replica(tmp_path, minilm, url):
    # the default Policy and index choice (auto: pgvector, as L3 has it); no Redis
    return create_app(server_config(tmp_path, embedder=minilm, threshold=None, verifier="default", sql_url=url))


async def test_replicas_share_the_index_at_commit_and_a_late_replica_needs_no_rebuild(
    tmp_path, minilm, pgvector_schema_url, monkeypatch
):
    async with in_process(replica(tmp_path, minilm, pgvector_schema_url)) as a, in_process(
        replica(tmp_path, minilm, pgvector_schema_url)
    ) as b:
        stats = (await b.get("/v1/stats", headers=auth("tok-admin"))).json()
        assert stats["index"]["backend"] == "pgvector"
        r = await a.post("/v1/entries", json={"prompt": PROMPT, "value": ANSWER}, headers=auth(TENANT_A))
        assert r.status_code == 201
        hit = (await b.post("/v1/lookup", json={"prompt": PARA}, headers=auth(TENANT_A))).json()
        assert hit["hit"] and hit["kind"] == "semantic" and hit["value"] == ANSWER, hit
        assert hit["matched_prompt"] == PROMPT
        # the other tenant's scope is a hard filter in the shared index too
        assert (await b.post("/v1/lookup", json={"prompt": PARA}, headers=auth(TENANT_B))).json()["hit"] is False

        def no_rebuild(self, *args, **kwargs):
            raise AssertionError("a replica on pgvector must not rebuild an index")

        monkeypatch.setattr(Reindexer, "_rebuild", no_rebuild)
        async with in_process(replica(tmp_path, minilm, pgvector_schema_url)) as c:
            hit = (await c.post("/v1/lookup", json={"prompt": PARA}, headers=auth(TENANT_A))).json()
            assert hit["hit"] and hit["value"] == ANSWER, hit
            # an invalidation through the late replica reaches A's semantic path at commit
            r = await c.post("/v1/invalidate", json={"prompt": PROMPT}, headers=auth(TENANT_A))
            assert r.status_code == 200, r.text
        miss = (await a.post("/v1/lookup", json={"prompt": PARA}, headers=auth(TENANT_A))).json()
        assert miss["hit"] is False, miss
