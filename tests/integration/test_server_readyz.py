"""/readyz: 503 when the durable tier (L3) is down or failed, 200 "degraded" when only another
tier is, and never a driver's message in the body. Includes a real SQLite L3 file corrupted
under a running sidecar."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace

import pytest

from semcache.server.app import create_app, readiness, tier_state
from tests._sidecar import ADMIN, TENANT_A, auth, in_process, server_config

SECRET = "db.internal.example:5432 password=hunter2"


@pytest.mark.parametrize(
    ("status", "word"),
    [
        ("ok", "ok"),
        ("down: connection refused", "down"),
        ("failed: database disk image is malformed", "failed"),
        ("something unexpected", "down"),
    ],
)
def test_tier_state_keeps_only_the_word(status, word):
    assert tier_state(status) == word


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ({"l1": "ok", "l3": "ok"}, ("ready", [], None)),
        ({"l1": "ok", "l2": "ok", "l3": "ok"}, ("ready", [], None)),
        ({"l1": "ok", "l3": "failed: x"}, ("down", ["l3"], "l3 (the durable tier) is failed")),
        ({"l1": "ok", "l3": "down: x"}, ("down", ["l3"], "l3 (the durable tier) is down")),
        (
            {"l1": "ok", "l2": "down: x", "l3": "failed: y"},
            ("down", ["l2", "l3"], "l3 (the durable tier) is failed"),
        ),
        ({"l1": "ok", "l2": "down: x", "l3": "ok"}, ("degraded", ["l2"], None)),
        ({"l1": "ok", "l2": "failed: x", "l3": "ok"}, ("degraded", ["l2"], None)),
        # no L3: the lowest configured tier is the durable one
        ({"l1": "ok", "l2": "down: x"}, ("down", ["l2"], "l2 (the durable tier) is down")),
        ({"l1": "ok"}, ("ready", [], None)),
    ],
)
def test_readiness_rule(health, expected):
    status, tiers, degraded, reason = readiness(health)
    assert (status, degraded, reason) == expected
    assert set(tiers) == set(health) and set(tiers.values()) <= {"ok", "down", "failed"}


@pytest.fixture
async def app_and_client(tmp_path):
    app = create_app(server_config(tmp_path))
    async with in_process(app) as client:
        yield app, client


def _fake_health(app, monkeypatch, health):
    cache = app.state.sidecar.cache

    async def health_now():
        return dict(health)

    monkeypatch.setattr(cache, "health", health_now)


async def test_ready_when_every_tier_is_ok(app_and_client):
    _, client = app_and_client
    r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["tiers"] == {"l1": "ok", "l3": "ok"}
    assert body["degraded"] == [] and "reason" not in body
    assert body["index"] == {"vectors": 0} and body["embedder"]


@pytest.mark.parametrize("state", ["failed", "down"])
async def test_a_failed_or_down_l3_is_a_503_naming_it(app_and_client, monkeypatch, state):
    app, client = app_and_client
    _fake_health(app, monkeypatch, {"l1": "ok", "l3": f"{state}: {SECRET}"})
    r = await client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "down"
    assert body["tiers"] == {"l1": "ok", "l3": state}
    assert body["degraded"] == ["l3"] and body["reason"] == f"l3 (the durable tier) is {state}"
    assert "hunter2" not in r.text and "internal" not in r.text  # no driver message


async def test_a_down_l2_alone_is_degraded_not_unready(app_and_client, monkeypatch):
    app, client = app_and_client
    _fake_health(app, monkeypatch, {"l1": "ok", "l2": f"down: {SECRET}", "l3": "ok"})
    r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded" and body["degraded"] == ["l2"]
    assert body["tiers"] == {"l1": "ok", "l2": "down", "l3": "ok"}
    assert "hunter2" not in r.text


async def test_the_openapi_document_describes_the_503(app_and_client):
    _, client = app_and_client
    doc = (await client.get("/openapi.json")).json()
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    assert "503" in responses and "durable" in responses["503"]["description"]


def _corrupt_middle_pages(path, seed=7):
    """Fold the WAL into the file, then overwrite the middle third of its pages with noise."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()
    size = path.stat().st_size
    pages = size // page_size
    assert pages >= 12, f"the test database is too small to corrupt meaningfully ({pages} pages)"
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for page in range(pages // 3, 2 * pages // 3):
            f.seek(page * page_size)
            f.write(bytes(rng.getrandbits(8) for _ in range(page_size)))


def _no_l1(tmp_path):
    cfg = server_config(tmp_path)
    return replace(cfg, cache=replace(cfg.cache, memory=None))  # no L1 to hide the damage


def _prompt(i):
    return f"stored question number {i} " + "padding " * 40


async def _store_200(client):
    for i in range(200):
        r = await client.post(
            "/v1/entries",
            json={"prompt": _prompt(i), "value": i},
            headers=auth(TENANT_A),
        )
        assert r.status_code == 201, r.text


def _assert_unready_naming_l3(r):
    body = r.json()
    assert r.status_code == 503, body
    assert body["status"] == "down"
    assert body["tiers"]["l3"] == "failed", body
    assert "l3" in body["reason"] and "l3" in body["degraded"]
    assert "malformed" not in r.text and "quick_check" not in r.text  # the word only


async def test_a_sqlite_l3_corrupted_while_serving_makes_readyz_a_503_naming_l3(tmp_path):
    db = tmp_path / "sidecar.db"
    async with in_process(create_app(_no_l1(tmp_path))) as client:
        await _store_200(client)
        assert (await client.get("/readyz")).status_code == 200

        _corrupt_middle_pages(db)

        # read through the damaged pages, as traffic would (answers are not the point here)
        await client.get("/v1/entries", params={"limit": 500}, headers=auth(ADMIN))
        await client.get("/v1/index/check", headers=auth(ADMIN))
        for i in range(200):
            await client.post("/v1/lookup", json={"prompt": _prompt(i)}, headers=auth(TENANT_A))
        _assert_unready_naming_l3(await client.get("/readyz"))


async def test_a_sidecar_started_on_a_corrupt_sqlite_l3_is_not_ready(tmp_path):
    db = tmp_path / "sidecar.db"
    async with in_process(create_app(_no_l1(tmp_path))) as client:
        await _store_200(client)
    _corrupt_middle_pages(db)
    async with in_process(create_app(server_config(tmp_path))) as client:
        _assert_unready_naming_l3(await client.get("/readyz"))
