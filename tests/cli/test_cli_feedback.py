"""``semcache feedback`` on the local store (a real SQLite file) and against a running
sidecar (uvicorn on a loopback port): a wrong paraphrase stops being served, a wrong
exact hit removes its entry, errors are one ``Error:`` line with a non-zero exit."""

from __future__ import annotations

import json

import httpx
import pytest

from semcache import CacheConfig, Policy, SemanticCache, SQLConfig, build_request
from semcache.cli.main import cli
from semcache.feedback import load_labels
from semcache.server.app import create_app
from tests._sidecar import TENANT_A, TENANT_B, SidecarThread, auth, server_config

FRANCE = "What is the capital of France?"
#: A paraphrase the hashing embedder puts above 0.8 from FRANCE.
NEAR = "what is the capital of france"


def js(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_local_wrong_paraphrase_is_blocked_and_labelled(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "--embedder", "hashing"]
    entry = build_request(FRANCE, model="m1").key
    look = [*base, "lookup", NEAR, "--model", "m1", "--threshold", "0.8", "--json"]
    assert js(runner.invoke(cli, look))["entry_id"] == entry
    done = js(runner.invoke(cli, [*base, "feedback", entry, "--wrong", "--prompt", NEAR, "--model", "m1", "--json"]))
    assert done["blocked"] is True and done["kind"] == "semantic" and done["stored_in"] == "l3"
    after = js(runner.invoke(cli, look))
    assert after.get("entry_id") != entry  # never this entry again for this prompt
    exact = js(runner.invoke(cli, [*base, "lookup", FRANCE, "--model", "m1", "--json"]))
    assert exact["kind"] == "exact"  # the entry itself is still served to its own prompt
    cfg = CacheConfig(sql=SQLConfig(url=sqlite_db), embedder=None, policy=Policy(verifier=None))
    with SemanticCache(cfg) as c:
        rows = load_labels(c)
    assert [(r["prompt"], r["cached_prompt"], r["correct"]) for r in rows] == [(NEAR, FRANCE, False)]
    assert 0.8 < rows[0]["similarity"] < 1.0


def test_local_wrong_exact_hit_removes_the_entry_and_human_output(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "--embedder", "hashing"]
    entry = build_request(FRANCE, model="m1").key
    r = runner.invoke(cli, [*base, "feedback", entry, "--correct", "--prompt", NEAR, "--model", "m1"])
    assert r.exit_code == 0 and r.stdout.startswith("correct (semantic hit): recorded"), r.output
    r = runner.invoke(cli, [*base, "feedback", entry, "--wrong", "--prompt", FRANCE, "--model", "m1"])
    assert r.exit_code == 0 and "invalidated" in r.stdout, r.output
    assert runner.invoke(cli, [*base, "show", entry]).exit_code == 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--wrong", "--prompt", NEAR], 1, "another scope"),  # the lookup had --model m1
        (["--wrong", "--prompt", "what\x00 is"], 1, "NUL"),
        (["--wrong", "--prompt", "   ", "--model", "m1"], 1, "empty"),
        (["--prompt", NEAR, "--model", "m1"], 2, "--wrong or --correct"),
        (["--wrong", "--model", "m1"], 2, "--prompt"),
    ],
)
def test_local_errors(runner, sqlite_db, args, code, message):
    base = ["--sql-url", sqlite_db, "--embedder", "hashing"]
    entry = build_request(FRANCE, model="m1").key
    r = runner.invoke(cli, [*base, "feedback", entry, *args])
    assert r.exit_code == code and message in r.stderr, r.output
    assert r.exit_code == 2 or r.stderr.startswith("Error: ")
    unknown = runner.invoke(cli, [*base, "feedback", "0" * 32, "--wrong", "--prompt", NEAR])
    assert unknown.exit_code == 3 and unknown.stderr.startswith("Error: no live entry"), unknown.output


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    with SidecarThread(create_app(server_config(tmp_path_factory.mktemp("feedback")))) as sc:
        yield sc


def test_remote_feedback(runner, sidecar):
    with httpx.Client(base_url=sidecar.url) as c:
        r = c.post("/v1/entries", json={"prompt": FRANCE, "value": "Paris", "model": "m"}, headers=auth(TENANT_A))
        entry = r.json()["entry_id"]
    base = ["--server", sidecar.url, "--token", TENANT_A]
    look = [*base, "lookup", NEAR, "--model", "m", "--json"]
    assert js(runner.invoke(cli, look))["entry_id"] == entry
    done = js(runner.invoke(cli, [*base, "feedback", entry, "--wrong", "--prompt", NEAR, "--model", "m", "--json"]))
    assert done["blocked"] is True and done["durable"] is True
    assert js(runner.invoke(cli, look))["hit"] is False
    other = ["--server", sidecar.url, "--token", TENANT_B, "feedback", entry, "--wrong", "--prompt", NEAR, "--model", "m"]
    r = runner.invoke(cli, other)
    assert r.exit_code == 3 and r.stderr.strip() == "Error: no such entry", r.output  # another tenant's
    r = runner.invoke(cli, [*base, "feedback", entry, "--wrong", "--prompt", "", "--model", "m"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "HTTP 422" in r.stderr, r.output
