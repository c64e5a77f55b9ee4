"""POST /v1/feedback in process (httpx.ASGITransport): a wrong semantic hit stops being
served, a wrong exact hit removes its entry, a correct one is only a label; tenants
report only on their own entries; bad bodies get 422, unknown entries 404, both as JSON;
/metrics counts the reports."""

from __future__ import annotations

import json

import pytest

from semcache.feedback import load_labels
from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process, server_config

E1 = "how do I reverse a list in python"
#: A paraphrase the hashing embedder puts at 0.91 from E1 (threshold 0.8).
Q = "how do I reverse a python list"


@pytest.fixture
async def app_client(tmp_path):
    app = create_app(server_config(tmp_path))
    async with in_process(app) as c:
        yield app, c


async def _store(client, prompt=E1, token=TENANT_A, **extra):
    r = await client.post("/v1/entries", json={"prompt": prompt, "value": "reversed(xs)", **extra}, headers=auth(token))
    assert r.status_code == 201, r.text
    return r.json()["entry_id"]


async def _lookup(client, prompt, token=TENANT_A, **extra):
    r = await client.post("/v1/lookup", json={"prompt": prompt, **extra}, headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()


async def _feedback(client, token=TENANT_A, **body):
    return await client.post("/v1/feedback", json=body, headers=auth(token))


async def test_a_wrong_semantic_hit_is_not_served_again(app_client):
    app, client = app_client
    entry = await _store(client, model="m")
    hit = await _lookup(client, Q, model="m")
    assert hit["hit"] and hit["kind"] == "semantic" and hit["entry_id"] == entry
    r = await _feedback(client, entry_id=entry, prompt=Q, model="m", correct=False)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["blocked"] is True and body["kind"] == "semantic" and body["verdict"] == "wrong"
    assert body["request_key"] == hit["key"] and body["durable"] is True and body["stored_in"] == "l3"
    assert 0.8 < body["similarity"] < 1.0
    assert (await _lookup(client, Q, model="m"))["hit"] is False
    assert (await _lookup(client, E1, model="m"))["kind"] == "exact"
    rows = load_labels(app.state.sidecar.cache)
    assert [(r["prompt"], r["cached_prompt"], r["correct"], r["namespace"]) for r in rows] == [(Q, E1, False, "tenant-a")]
    metrics = (await client.get("/metrics")).text
    assert 'semcache_feedback_total{verdict="wrong"} 1.0' in metrics
    assert 'semcache_feedback_total{verdict="correct"} 0.0' in metrics


async def test_a_wrong_exact_hit_removes_the_entry_and_a_correct_one_is_a_label(app_client):
    _, client = app_client
    entry = await _store(client)
    r = await _feedback(client, entry_id=entry, prompt=Q, correct=True, source="llm")
    assert r.status_code == 200 and r.json()["verdict"] == "correct" and not r.json()["blocked"]
    assert (await _lookup(client, Q))["hit"] is True
    r = await _feedback(client, entry_id=entry, prompt=E1, correct=False)
    assert r.status_code == 200 and r.json()["kind"] == "exact" and r.json()["invalidated"] == 1
    assert (await _lookup(client, E1))["hit"] is False
    assert (await client.get(f"/v1/entries/{entry}", headers=auth(TENANT_A))).status_code == 404


async def test_tenants_report_only_on_their_own_entries(app_client):
    _, client = app_client
    entry = await _store(client, token=TENANT_A)
    for token, extra in ((TENANT_B, {}), (TENANT_A, {"entry_id": "0" * 32})):
        r = await _feedback(client, token=token, **{"entry_id": entry, "prompt": Q, "correct": False, **extra})
        assert r.status_code == 404 and r.json()["error"]["message"] == "no such entry", r.text
    r = await _feedback(client, token=TENANT_A, entry_id=entry, prompt=Q, correct=False, namespace="tenant-b")
    assert r.status_code == 403
    r = await client.post("/v1/feedback", json={"entry_id": entry, "prompt": Q, "correct": False})
    assert r.status_code == 401
    assert (await _lookup(client, Q))["hit"] is True  # nothing was blocked
    # the admin may name the tenant's namespace
    r = await _feedback(client, token=ADMIN, entry_id=entry, prompt=Q, correct=False, namespace="tenant-a")
    assert r.status_code == 200 and r.json()["blocked"]
    assert (await _lookup(client, Q))["hit"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": Q, "correct": False},  # no entry_id
        {"entry_id": "e", "correct": False},  # no prompt
        {"entry_id": "e", "prompt": Q},  # no verdict
        {"entry_id": "e", "prompt": Q, "correct": "maybe"},
        {"entry_id": "e", "prompt": "", "correct": False},
        {"entry_id": "e", "prompt": Q, "messages": [{"role": "user", "content": Q}], "correct": False},
        {"entry_id": "e", "prompt": Q, "correct": False, "source": "robot"},
        {"entry_id": "e", "prompt": Q, "correct": False, "unknown": 1},
        {"entry_id": "", "prompt": Q, "correct": False},
        {"entry_id": "e", "prompt": "lone \\ud800 surrogate", "correct": False},  # sent as an escape
    ],
)
async def test_bad_bodies_get_422_with_a_json_error(app_client, body):
    _, client = app_client
    entry = await _store(client)
    if body.get("entry_id") == "e":
        body = {**body, "entry_id": entry}
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")  # JSON allows the escape; Python cannot encode it
    r = await client.post("/v1/feedback", content=raw, headers={**auth(TENANT_A), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["message"]
    assert (await _lookup(client, Q))["hit"] is True


async def test_request_semantics_errors_get_422_and_a_conflict_409(app_client):
    _, client = app_client
    entry = await _store(client, model="m")
    for body, status in (
        # a well-formed report that contradicts the entry: a conflict, not a schema violation
        ({"prompt": Q, "model": "other"}, 409),  # another scope than the entry's
        ({"prompt": "how do I\u0000 reverse"}, 422),  # a NUL in the prompt
        ({"prompt": "   "}, 422),  # nothing but blanks
    ):
        r = await _feedback(client, entry_id=entry, correct=False, **body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    assert (await _lookup(client, Q, model="m"))["hit"] is True


async def test_the_route_is_in_the_openapi_document(app_client):
    _, client = app_client
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/feedback"]["post"]
    assert {"200", "404", "409", "422"} <= set(op["responses"])
