"""The sidecar's JSON API in process (httpx.ASGITransport): lookup, store, entries, invalidation,
auth and tenant isolation, 413/422 errors, health, metrics and the OpenAPI document."""

from __future__ import annotations

import json

import pytest

from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process, server_config

Q = "What is the capital of France?"


@pytest.fixture
async def client(tmp_path):
    async with in_process(create_app(server_config(tmp_path, max_body_bytes=4096))) as c:
        yield c


async def store(client, token=TENANT_A, prompt=Q, value="Paris", **extra):
    r = await client.post(
        "/v1/entries", json={"prompt": prompt, "value": value, **extra}, headers=auth(token)
    )
    assert r.status_code == 201, r.text
    return r.json()


async def lookup(client, token=TENANT_A, prompt=Q, **extra):
    r = await client.post("/v1/lookup", json={"prompt": prompt, **extra}, headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()


async def test_store_then_exact_and_semantic_lookup(client):
    stored = await store(client, tags=["geo"], ttl_seconds=3600, model="m1")
    hit = await lookup(client, model="m1")
    assert hit["hit"] is True and hit["kind"] == "exact" and hit["tier"] == "l1"
    assert hit["entry_id"] == stored["entry_id"] and hit["similarity"] == 1.0
    assert hit["value"] == "Paris" and hit["tags"] == ["geo"] and hit["matched_prompt"] == Q
    assert 3590 < hit["ttl_seconds_left"] <= 3600 and hit["age_seconds"] >= 0

    near = await lookup(client, prompt="what is the capital of france", model="m1")
    assert near["hit"] is True and near["kind"] == "semantic" and 0.8 <= near["similarity"] < 1.0
    assert near["entry_id"] == stored["entry_id"] and near["key"] != stored["entry_id"]

    other_model = await lookup(client, model="m2")  # a scope field differs: never served
    assert other_model == {"hit": False, "key": other_model["key"]}
    exact_only = await lookup(
        client, prompt="what is the capital of france", model="m1", semantic=False
    )
    assert exact_only["hit"] is False


async def test_lookup_with_messages_and_params_scope(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": Q}]
    r = await client.post(
        "/v1/entries",
        json={
            "messages": msgs,
            "model": "m",
            "params": {"temperature": 0},
            "value": {"answer": "Paris"},
        },
        headers=auth(TENANT_A),
    )
    assert r.status_code == 201
    hit = await lookup(client, prompt=None, messages=msgs, model="m", params={"temperature": 0})
    assert hit["hit"] and hit["value"] == {"answer": "Paris"}
    miss = await lookup(client, prompt=None, messages=msgs, model="m", params={"temperature": 1})
    assert not miss["hit"]


async def test_entries_get_list_delete(client):
    e1 = await store(
        client, prompt="first question here", tags=["a"], metadata={"usage": {"total_tokens": 5}}
    )
    await store(client, prompt="second question here", tags=["b"], model="m")
    r = await client.get(f"/v1/entries/{e1['entry_id']}", headers=auth(TENANT_A))
    assert r.status_code == 200
    body = r.json()
    assert (
        body["value"] == "Paris"
        and body["prompt"] == "first question here"
        and body["namespace"] == "tenant-a"
    )
    assert body["metadata"] == {"usage": {"total_tokens": 5}}

    r = await client.get("/v1/entries", params={"limit": 1}, headers=auth(TENANT_A))
    assert r.status_code == 200 and len(r.json()["entries"]) == 1
    page2 = (
        await client.get("/v1/entries", params={"limit": 1, "offset": 1}, headers=auth(TENANT_A))
    ).json()
    assert len(page2["entries"]) == 1
    by_tag = (await client.get("/v1/entries", params={"tag": "b"}, headers=auth(TENANT_A))).json()[
        "entries"
    ]
    assert [e["prompt"] for e in by_tag] == ["second question here"]
    by_model = (
        await client.get("/v1/entries", params={"model": "m"}, headers=auth(TENANT_A))
    ).json()["entries"]
    assert len(by_model) == 1 and "value" not in by_model[0]  # values only when asked for

    r = await client.delete(f"/v1/entries/{e1['entry_id']}", headers=auth(TENANT_A))
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert (
        await client.get(f"/v1/entries/{e1['entry_id']}", headers=auth(TENANT_A))
    ).status_code == 404
    assert (
        await client.delete(f"/v1/entries/{e1['entry_id']}", headers=auth(TENANT_A))
    ).status_code == 404


async def test_invalidate_by_each_criterion_and_dry_run(client):
    await store(client, prompt="alpha one", tags=["t1"], model="m1")
    await store(client, prompt="alpha two", tags=["t1"], model="m2")
    e3 = await store(client, prompt="beta three", tags=["t2"], model="m2")

    async def inv(**body):
        r = await client.post("/v1/invalidate", json=body, headers=auth(TENANT_A))
        assert r.status_code == 200, r.text
        return r.json()

    assert await inv(tag="t1", dry_run=True) == {"removed": 0, "matched": 2, "dry_run": True}
    assert (await lookup(client, prompt="alpha one", model="m1"))[
        "hit"
    ]  # the dry run removed nothing
    assert (await inv(prompt_pattern="alpha*", model="m2"))["removed"] == 1
    assert (await inv(tag="t1"))["removed"] == 1
    assert (await inv(entry_id=e3["entry_id"]))["removed"] == 1
    await store(client, prompt="gamma", model="m3")
    assert (await inv(prompt="gamma", model="m3"))["removed"] == 1  # the exact key of a prompt
    await store(client, prompt="delta")
    assert (await inv(older_than_seconds=0))["removed"] == 1
    assert (await lookup(client, prompt="delta"))["hit"] is False

    r = await client.post("/v1/invalidate", json={}, headers=auth(TENANT_A))
    assert r.status_code == 422 and "criterion" in r.json()["error"]["message"]


async def test_tenant_isolation(client):
    a = await store(client, TENANT_A, value="secret of A", tags=["shared-tag"])
    # B asks the same question: a miss, never A's answer (the tenant is part of the scope)
    assert (await lookup(client, TENANT_B))["hit"] is False
    assert (await lookup(client, TENANT_B, prompt="what is the capital of france"))["hit"] is False
    # B cannot read, list, delete or invalidate A's entry
    assert (
        await client.get(f"/v1/entries/{a['entry_id']}", headers=auth(TENANT_B))
    ).status_code == 404
    assert (await client.get("/v1/entries", headers=auth(TENANT_B))).json()["entries"] == []
    assert (
        await client.delete(f"/v1/entries/{a['entry_id']}", headers=auth(TENANT_B))
    ).status_code == 404
    for body in (
        {"tag": "shared-tag"},
        {"entry_id": a["entry_id"]},
        {"keys": [a["entry_id"]]},
        {"older_than_seconds": 0},
    ):
        r = await client.post("/v1/invalidate", json=body, headers=auth(TENANT_B))
        assert r.status_code == 200 and r.json()["removed"] == 0, body
    assert (await client.post("/v1/flush", headers=auth(TENANT_B))).json() == {"removed": 0}
    # naming another tenant's namespace is refused outright
    for path, body in (
        ("/v1/lookup", {"prompt": Q, "namespace": "tenant-a"}),
        ("/v1/invalidate", {"namespace": "tenant-a"}),
    ):
        r = await client.post(path, json=body, headers=auth(TENANT_B))
        assert r.status_code == 403, path
    r = await client.get("/v1/entries", params={"namespace": "tenant-a"}, headers=auth(TENANT_B))
    assert r.status_code == 403
    # A still has it; the admin sees it in A's namespace
    assert (await lookup(client, TENANT_A))["value"] == "secret of A"
    r = await client.post(
        "/v1/lookup", json={"prompt": Q, "namespace": "tenant-a"}, headers=auth(ADMIN)
    )
    assert r.json()["hit"] is True
    # a tenant's flush removes only its own entries
    await store(client, TENANT_B, value="B's")
    assert (await client.post("/v1/flush", headers=auth(TENANT_B))).json() == {"removed": 1}
    assert (await lookup(client, TENANT_A))["hit"] is True


async def test_auth(client):
    r = await client.post("/v1/lookup", json={"prompt": Q})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    r = await client.post("/v1/lookup", json={"prompt": Q}, headers=auth("nope"))
    assert r.status_code == 401
    r = await client.post(
        "/v1/lookup", json={"prompt": Q}, headers={"authorization": "Basic dXNlcjpwdw=="}
    )
    assert r.status_code == 401
    r = await client.post("/v1/lookup", json={"prompt": Q}, headers={"x-semcache-token": TENANT_A})
    assert r.status_code == 200
    for method, path in (
        ("POST", "/v1/index/rebuild"),
        ("GET", "/v1/index/check"),
    ):
        assert (await client.request(method, path, headers=auth(TENANT_A))).status_code == 403, path
        assert (await client.request(method, path, headers=auth(ADMIN))).status_code == 200, path
    # health and metrics need no token
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/metrics")).status_code == 200


async def test_admin_flush_and_stats(client):
    await store(client, TENANT_A)
    await store(client, TENANT_B)
    await lookup(client, TENANT_A)
    await lookup(client, TENANT_A, prompt="nothing like it at all")
    stats = (await client.get("/v1/stats", headers=auth(ADMIN))).json()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["sets"] == 2
    assert (await client.post("/v1/flush", headers=auth(ADMIN))).json() == {"removed": 2}
    assert (await lookup(client, TENANT_B))["hit"] is False


async def test_auth_switched_off(tmp_path):
    async with in_process(
        create_app(server_config(tmp_path, auth=False, tokens={}, admin_token=None))
    ) as c:
        r = await c.post("/v1/entries", json={"prompt": Q, "value": 1})
        assert r.status_code == 201
        assert (await c.get("/v1/stats")).status_code == 200


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "json"),
        (b"\xfe\xff", "JSON"),
        (b"[]", ""),
        (b'{"prompt": ""}', "prompt"),
        (b'{"value": 1}', ""),
        (b'{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', ""),
        (b'{"prompt": 5}', "prompt"),
        (b'{"prompt": "x", "threshold": 7}', "threshold"),
        (b'{"prompt": "x", "bogus": 1}', "bogus"),
        (b'{"prompt": "\\ud800"}', ""),
        (b'{"messages": [{"role": "system", "content": "no user turn"}]}', ""),
        (b'{"messages": [{"role": "user", "content": 5}]}', ""),
        (b'{"prompt": "x", "params": {"t": NaN}}', "finite"),
        (b'{"prompt": "x", "params": {"t": [-Infinity]}}', "finite"),
    ],
)
async def test_malformed_lookup_is_422_json(client, body, where):
    r = await client.post(
        "/v1/lookup", content=body, headers={**auth(TENANT_A), "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == 422 and err["message"]
    assert where in json.dumps(err)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x"},  # no value
        {"prompt": "x", "value": 1, "ttl_seconds": -1},
        {"prompt": "x", "value": 1, "ttl_seconds": 1e300},
        {"prompt": "x", "value": 1, "tags": "not-a-list"},
        {"prompt": "x", "value": 1, "tags": [""]},
        {"prompt": "x", "value": 1, "metadata": [1]},
    ],
)
async def test_malformed_store_is_422(client, body):
    r = await client.post("/v1/entries", json=body, headers=auth(TENANT_A))
    assert r.status_code == 422, r.text


async def test_store_ttl_none_means_never_and_default_applies(client):
    never = (
        await client.post(
            "/v1/entries",
            json={"prompt": "p1", "value": 1, "ttl_seconds": None},
            headers=auth(TENANT_A),
        )
    ).json()
    assert never["expires_at"] is None
    default = await store(client, prompt="p2")
    assert default["expires_at"] - default["created_at"] == pytest.approx(7 * 24 * 3600)


async def test_body_over_limit_is_413(client):
    big = {"prompt": "x" * 5000, "value": 1}
    r = await client.post("/v1/entries", json=big, headers=auth(TENANT_A))
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    async def chunked():
        for _ in range(10):
            yield b" " * 1000

    # no Content-Length: the streamed body is counted as it arrives
    r = await client.post(
        "/v1/lookup",
        content=chunked(),
        headers={**auth(TENANT_A), "content-type": "application/json"},
    )
    assert r.status_code == 413


async def test_explain(client):
    await store(client, prompt="How many legs does a spider have?", value="8")
    r = await client.post(
        "/v1/explain",
        json={"prompt": "How many legs does a spider have", "k": 3},
        headers=auth(TENANT_A),
    )
    assert r.status_code == 200
    out = r.json()
    assert out["decision"] in ("hit", "miss") and out["candidates"]
    cand = out["candidates"][0]
    assert {
        "entry_id",
        "similarity",
        "prompt",
        "passed_threshold",
        "guards",
        "decision",
    } <= cand.keys()


async def test_readyz_reports_each_tier(client):
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready" and r.json()["tiers"] == {"l1": "ok", "l3": "ok"}


async def test_metrics_counts_hits_misses_and_batches(client):
    await store(client)
    await lookup(client)
    await lookup(client, prompt="what is the capital of france")
    await lookup(client, prompt="something else entirely, unrelated")
    text = (await client.get("/metrics")).text
    assert 'semcache_hits_total{kind="exact",tier="l1"} 1.0' in text
    assert 'semcache_hits_total{kind="semantic",tier="l1"} 1.0' in text
    assert "semcache_misses_total 1.0" in text
    assert "semcache_lookup_seconds_bucket" in text
    assert "semcache_embedding_batch_size_count" in text
    assert 'semcache_tier_errors_total{tier="l3"} 0.0' in text
    assert "semcache_saved_tokens_total" in text and "semcache_saved_cost_dollars_total" in text
    assert 'semcache_http_requests_total{method="POST",route="/v1/lookup",status="200"} 3.0' in text


async def test_metrics_put_unknown_http_methods_under_one_label(client):
    for i in range(20):
        await client.request(f"X{i}", "/nope")
    text = (await client.get("/metrics")).text
    assert 'method="X' not in text
    assert (
        'semcache_http_requests_total{method="other",route="unmatched",status="404"} 20.0' in text
    )


async def test_two_apps_in_one_process_have_separate_metrics(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        in_process(create_app(server_config(tmp_path / "a"))) as a,
        in_process(create_app(server_config(tmp_path / "b"))) as b,
    ):
        await a.post("/v1/lookup", json={"prompt": "x"}, headers=auth(TENANT_A))
        assert "semcache_misses_total 1.0" in (await a.get("/metrics")).text
        assert "semcache_misses_total 0.0" in (await b.get("/metrics")).text


async def test_openapi_document_describes_the_api(client):
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/v1/lookup",
        "/v1/entries",
        "/v1/entries/{entry_id}",
        "/v1/invalidate",
        "/v1/stats",
        "/healthz",
        "/readyz",
        "/v1/chat/completions",
        "/v1/explain",
        "/v1/flush",
    ):
        assert path in paths, path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


async def test_prompt_pattern_filters_before_it_pages(client, monkeypatch):
    import semcache.admin

    monkeypatch.setattr(semcache.admin, "_PATTERN_PAGE", 7, raising=False)  # several trips
    for i in range(3):
        await store(client, prompt=f"refund please {i}")
    for i in range(30):
        await store(client, prompt=f"other question {i}")  # newer: listed first

    async def page(**params):
        r = await client.get(
            "/v1/entries", params={"prompt_pattern": "*refund*", **params}, headers=auth(TENANT_A)
        )
        assert r.status_code == 200, r.text
        return [e["prompt"] for e in r.json()["entries"]]

    assert sorted(await page(limit=10)) == [f"refund please {i}" for i in range(3)]
    first, second = await page(limit=2), await page(limit=2, offset=2)
    assert len(first) == 2 and len(second) == 1
    assert sorted(first + second) == [f"refund please {i}" for i in range(3)]
    assert await page(limit=2, offset=3) == []
    # other criteria still apply, in the database
    assert await page(limit=10, model="no-such-model") == []


# -- the OpenAPI document: what client generators and schemathesis rely on ---------------


def _validator(doc: dict, name: str):
    """A JSON Schema validator for the document's component ``name`` (refs resolved in it)."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


async def test_operation_ids_are_readable(client):
    doc = (await client.get("/openapi.json")).json()
    ids = {
        (method.upper(), path): op["operationId"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert ids == {
        ("GET", "/healthz"): "healthz",
        ("GET", "/readyz"): "readyz",
        ("GET", "/metrics"): "metrics",
        ("POST", "/v1/lookup"): "lookup",
        ("POST", "/v1/explain"): "explain",
        ("POST", "/v1/entries"): "store",
        ("GET", "/v1/entries"): "listEntries",
        ("GET", "/v1/entries/{entry_id}"): "getEntry",
        ("DELETE", "/v1/entries/{entry_id}"): "deleteEntry",
        ("POST", "/v1/invalidate"): "invalidate",
        ("POST", "/v1/flush"): "flush",
        ("POST", "/v1/feedback"): "feedback",
        ("GET", "/v1/stats"): "stats",
        ("POST", "/v1/index/rebuild"): "rebuildIndex",
        ("GET", "/v1/index/check"): "checkIndex",
        ("POST", "/v1/chat/completions"): "chatCompletions",
        ("GET", "/v1/models"): "listModels",
    }


async def test_routes_without_a_token_document_no_auth_errors(client):
    doc = (await client.get("/openapi.json")).json()
    for path in ("/healthz", "/readyz", "/metrics"):
        op = doc["paths"][path]["get"]
        assert "security" not in op, path
        assert not {"401", "403"} & set(op["responses"]), path
        assert (await client.get(path)).status_code in (200, 503)  # and indeed none is asked
    lookup_op = doc["paths"]["/v1/lookup"]["post"]
    assert {"401", "403", "413", "422", "503"} <= set(lookup_op["responses"])
    assert lookup_op["security"] == [{"HTTPBearer": []}, {"semcacheToken": []}]
    error = lookup_op["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}


async def test_auth_off_documents_no_auth(tmp_path):
    async with in_process(create_app(server_config(tmp_path, auth=False))) as c:
        doc = (await c.get("/openapi.json")).json()
    op = doc["paths"]["/v1/lookup"]["post"]
    assert "security" not in op and "401" not in op["responses"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/entries", "GET, POST"),
        ("PUT", "/v1/entries", "GET, POST"),
        ("POST", "/v1/entries/abc", "GET, DELETE"),
        ("DELETE", "/v1/lookup", "POST"),
    ],
)
async def test_405_allow_names_every_method_of_the_path(client, method, path, allow):
    r = await client.request(method, path, headers=auth(TENANT_A))
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.json()["error"]["code"] == 405


async def test_request_bodies_are_models_without_a_top_level_one_of(client):
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name in ("LookupRequest", "StoreRequest", "ExplainRequest", "FeedbackRequest", "InvalidateRequest"):
        schema = schemas[name]
        assert schema["type"] == "object" and "properties" in schema, name
        assert not {"oneOf", "anyOf", "allOf"} & set(schema), name
    for path, ref in (("/v1/lookup", "LookupRequest"), ("/v1/entries", "StoreRequest"), ("/v1/explain", "ExplainRequest")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{ref}"}


#: Bodies for /v1/lookup, each with whether the route accepts it.
LOOKUP_BODIES = [
    ({"prompt": "x", "messages": None}, True),  # a null is the same as leaving it out
    ({"prompt": None, "messages": [{"role": "user", "content": "x"}]}, True),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, True),
    ({}, False),  # neither
    ({"prompt": None, "messages": None}, False),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, False),  # both
    ({"messages": [{"role": "tool", "content": "x"}]}, False),  # no user turn
    ({"messages": [{"role": "user", "content": "   "}]}, False),  # a blank user turn
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, False),
    ({"prompt": " \t\n\u3000"}, False),  # blank
    ({"prompt": "a\u0000b"}, False),  # NUL
    ({"prompt": "x", "model": "m" * 256}, False),
    ({"prompt": "x", "include_value": 0}, False),  # no coercion: a number is not a boolean
    ({"prompt": "x", "threshold": False}, False),
    ({"prompt": "x", "threshold": 1}, True),
]


@pytest.mark.parametrize(("body", "accepted"), LOOKUP_BODIES)
async def test_the_lookup_schema_says_what_the_route_accepts(client, body, accepted):
    doc = (await client.get("/openapi.json")).json()
    assert _validator(doc, "LookupRequest").is_valid(body) is accepted
    r = await client.post("/v1/lookup", json=body, headers=auth(TENANT_A))
    assert (r.status_code == 200) is accepted, r.text
    if not accepted:
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"prompt": "x", "value": 1, "tags": ["a", "b"]}, True),
        ({"prompt": "x", "value": 1, "tags": [""]}, False),
        ({"prompt": "x", "value": 1, "tags": ["t" * 256]}, False),
        ({"prompt": "x", "value": 1, "metadata": {"usage": {"total_tokens": 5}, "n": [1, "a"]}}, True),
        ({"prompt": "x", "value": 1, "metadata": {"deep": [{"s": "a\u0000"}]}}, False),
        ({"prompt": "x", "value": 1, "metadata": {"k\u0000": 1}}, False),
        ({"prompt": "x", "value": 1, "ttl_seconds": 0}, False),
        ({"prompt": "x"}, False),  # no value
    ],
)
async def test_the_store_schema_says_what_the_route_accepts(client, body, accepted):
    doc = (await client.get("/openapi.json")).json()
    assert _validator(doc, "StoreRequest").is_valid(body) is accepted
    r = await client.post("/v1/entries", json=body, headers=auth(TENANT_A))
    assert (r.status_code == 201) is accepted, r.text
    if not accepted:
        assert r.status_code == 422


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"tag": "x"}, True),
        ({"prompt": "x", "dry_run": True}, True),
        ({"keys": ["a"]}, True),
        ({}, False),  # no criterion
        ({"dry_run": True, "params": {"t": 1}}, False),  # neither is a criterion
        ({"keys": []}, False),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, False),
        ({"messages": [{"role": "assistant", "content": "x"}]}, False),
    ],
)
async def test_the_invalidate_schema_says_what_the_route_accepts(client, body, accepted):
    doc = (await client.get("/openapi.json")).json()
    assert _validator(doc, "InvalidateRequest").is_valid(body) is accepted
    r = await client.post("/v1/invalidate", json=body, headers=auth(TENANT_A))
    assert (r.status_code == 200) is accepted, r.text
    if not accepted:
        assert r.status_code == 422


async def test_explain_stats_and_index_answers_match_their_schemas(client):
    doc = (await client.get("/openapi.json")).json()
    await store(client, model="m")
    answers = {
        "ExplainResponse": await client.post(
            "/v1/explain", json={"prompt": "what is the capital of france", "model": "m"}, headers=auth(TENANT_A)
        ),
        "StatsResponse": await client.get("/v1/stats", headers=auth(ADMIN)),
        "IndexRebuildResponse": await client.post("/v1/index/rebuild", headers=auth(ADMIN)),
        "IndexCheckResponse": await client.get("/v1/index/check", headers=auth(ADMIN)),
    }
    routes = {
        "ExplainResponse": ("/v1/explain", "post"),
        "StatsResponse": ("/v1/stats", "get"),
        "IndexRebuildResponse": ("/v1/index/rebuild", "post"),
        "IndexCheckResponse": ("/v1/index/check", "get"),
    }
    for name, r in answers.items():
        assert r.status_code == 200, r.text
        path, method = routes[name]
        documented = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        assert documented["schema"] == {"$ref": f"#/components/schemas/{name}"}
        v = _validator(doc, name)
        assert v.is_valid(r.json()), (name, r.json())
    assert answers["ExplainResponse"].json()["candidates"][0]["guards"]
    # and the schemas say something: a wrong shape is not valid
    assert not _validator(doc, "ExplainResponse").is_valid({"key": "k"})
    assert not _validator(doc, "IndexRebuildResponse").is_valid({"vectors": "many"})


async def test_models_cache_only_are_the_models_in_the_cache(client):
    await store(client, model="m-a1")
    await store(client, prompt="another question", model="m-a2")
    await store(client, prompt="no model at all")
    await store(client, token=TENANT_B, model="m-b")
    r = await client.get("/v1/models", headers=auth(TENANT_A))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["m-a1", "m-a2"]  # the tenant's own
    assert all(m["object"] == "model" for m in body["data"])
    admin = (await client.get("/v1/models", headers=auth(ADMIN))).json()
    assert sorted(m["id"] for m in admin["data"]) == ["m-a1", "m-a2", "m-b"]
    assert (await client.get("/v1/models")).status_code == 401
