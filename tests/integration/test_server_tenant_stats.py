"""Per-tenant counters through the sidecar: a tenant token reads its own tenant's stats
(not the others', not the cache-wide ones), the admin reads any tenant's, and
``/metrics`` carries them under a ``tenant`` label bounded by ``tenant_metrics_limit``."""

from __future__ import annotations

import re

import pytest

from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process, server_config

Q = "What is the capital of France?"


async def _store(client, token, prompt=Q, value="Paris", **extra):
    r = await client.post("/v1/entries", json={"prompt": prompt, "value": value, **extra}, headers=auth(token))
    assert r.status_code == 201, r.text


async def _lookup(client, token, prompt=Q, **extra):
    r = await client.post("/v1/lookup", json={"prompt": prompt, **extra}, headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1))))
            out[labels] = float(m.group(2))
    return out


@pytest.fixture
async def client(tmp_path):
    async with in_process(create_app(server_config(tmp_path))) as c:
        yield c


async def test_a_tenant_token_reads_its_own_tenants_stats(client):
    await _store(client, TENANT_A)
    await _store(client, TENANT_A, prompt="Who wrote Hamlet?", value="Shakespeare")
    assert (await _lookup(client, TENANT_A))["kind"] == "exact"
    assert (await _lookup(client, TENANT_A, prompt="what is the capital of france"))["kind"] == "semantic"
    assert (await _lookup(client, TENANT_A, prompt="How tall is Everest?"))["hit"] is False
    await _store(client, TENANT_B)
    for _ in range(3):
        assert (await _lookup(client, TENANT_B, prompt="Unrelated question about tides?"))["hit"] is False

    r = await client.get("/v1/stats", headers=auth(TENANT_A))
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["namespace"] == "tenant-a" and a["tracked"] is True
    assert (a["lookups"], a["hits"], a["misses"], a["sets"]) == (3, 2, 1, 2)
    assert (a["hits_exact"], a["hits_semantic"]) == (1, 1)
    assert a["hits_by"] == {"l1_exact": 1, "l1_semantic": 1}
    assert a["hit_rate"] == pytest.approx(2 / 3)
    # nothing cache-wide leaks to a tenant: no tiers, no index, no other tenant's counts
    assert not {"tiers", "index", "tier_errors", "embedder"} & set(a)

    b = (await client.get("/v1/stats", headers=auth(TENANT_B))).json()
    assert (b["namespace"], b["lookups"], b["hits"], b["misses"], b["sets"]) == ("tenant-b", 3, 0, 3, 1)
    # its own namespace named explicitly is the same answer; another tenant's is a 403
    same = await client.get("/v1/stats", params={"namespace": "tenant-b"}, headers=auth(TENANT_B))
    assert same.status_code == 200 and same.json() == b
    other = await client.get("/v1/stats", params={"namespace": "tenant-a"}, headers=auth(TENANT_B))
    assert other.status_code == 403 and other.json()["error"]["type"] == "permission_error"

    # the admin reads any one tenant's, and the whole cache's without a namespace
    assert (await client.get("/v1/stats", params={"namespace": "tenant-a"}, headers=auth(ADMIN))).json() == a
    whole = (await client.get("/v1/stats", headers=auth(ADMIN))).json()
    assert whole["hits"] == 2 and whole["misses"] == 4 and whole["sets"] == 3 and "tiers" in whole
    assert whole["namespaces_tracked"] == 2


async def test_a_tenant_invalidating_is_counted_as_its_own(client):
    await _store(client, TENANT_A, tags=["t"])
    await _store(client, TENANT_A, prompt="Who wrote Hamlet?", value="Shakespeare", tags=["t"])
    r = await client.post("/v1/invalidate", json={"tag": "t"}, headers=auth(TENANT_A))
    assert r.json()["removed"] == 2
    assert (await client.get("/v1/stats", headers=auth(TENANT_A))).json()["invalidated"] == 2
    assert (await client.get("/v1/stats", headers=auth(TENANT_B))).json()["invalidated"] == 0


async def test_tenant_metrics_are_bounded_and_monotonic(tmp_path):
    # two labels: the configured tenants take them; every other namespace is "_other"
    app = create_app(server_config(tmp_path, tenant_metrics_limit=2))
    async with in_process(app) as client:
        for ns in ("n1", "n2", "n3"):  # the admin writes into namespaces with no token
            await _store(client, ADMIN, namespace=ns)
        await _lookup(client, TENANT_A, prompt="How tall is Everest?")
        await _lookup(client, ADMIN, namespace="n3")
        first = (await client.get("/metrics")).text
        misses = _samples(first, "semcache_tenant_misses_total")
        sets = _samples(first, "semcache_tenant_sets_total")
        assert {dict(k)["tenant"] for k in misses} == {"tenant-a", "tenant-b", "_other"}
        assert misses[(("tenant", "tenant-a"),)] == 1 and sets[(("tenant", "_other"),)] == 3
        hits = _samples(first, "semcache_tenant_hits_total")
        assert hits[(("kind", "exact"), ("tenant", "_other"))] == 1

        # many more namespaces: the label set stays the same, and no series goes down
        for i in range(20):
            await _store(client, ADMIN, namespace=f"more-{i}", prompt=f"question {i}?")
        second = (await client.get("/metrics")).text
        for name in ("semcache_tenant_misses_total", "semcache_tenant_sets_total", "semcache_tenant_hits_total"):
            before, after = _samples(first, name), _samples(second, name)
            assert set(after) == set(before), name
            assert all(after[k] >= before[k] for k in before), name
        assert _samples(second, "semcache_tenant_sets_total")[(("tenant", "_other"),)] == 23
