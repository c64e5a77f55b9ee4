"""The ``semcache`` CLI against a running sidecar (uvicorn on a loopback port) with --server/--token,
and against the real Redis as L2."""

from __future__ import annotations

import json

import httpx
import pytest

from semcache.cli.main import cli
from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, SidecarThread, auth, server_config


def js(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    with SidecarThread(create_app(server_config(tmp_path_factory.mktemp("remote")))) as sc:
        yield sc


@pytest.fixture
def seeded(sidecar):
    with httpx.Client(base_url=sidecar.url) as c:
        c.post("/v1/flush", headers=auth(ADMIN)).raise_for_status()
        for prompt, tag, token in (
            ("How do I reset my password?", "support", TENANT_A),
            ("How do I change my email?", "support", TENANT_A),
            ("What are your opening hours?", "hours", TENANT_A),
            ("Tenant B's own question", "support", TENANT_B),
        ):
            body = {"prompt": prompt, "value": f"answer: {prompt}", "tags": [tag], "model": "m"}
            c.post("/v1/entries", json=body, headers=auth(token)).raise_for_status()
    return sidecar


def test_read_commands_as_a_tenant(runner, seeded):
    base = ["--server", seeded.url, "--token", TENANT_A]
    entries = js(runner.invoke(cli, [*base, "ls", "--json"]))["entries"]
    assert len(entries) == 3 and {e["namespace"] for e in entries} == {"tenant-a"}  # never B's
    shown = js(runner.invoke(cli, [*base, "show", entries[0]["entry_id"], "--json"]))
    assert shown["value"].startswith("answer: ")
    hit = js(
        runner.invoke(
            cli, [*base, "lookup", "How do I reset my password?", "--model", "m", "--json"]
        )
    )
    assert hit["hit"] and hit["kind"] == "exact"
    explained = js(
        runner.invoke(
            cli,
            [*base, "lookup", "how do i reset my password", "--model", "m", "--explain", "--json"],
        )
    )
    assert explained["candidates"][0]["prompt"] == "How do I reset my password?"
    # a tenant's stats are its own tenant's: no cache-wide figure
    own = js(runner.invoke(cli, [*base, "stats", "--json"]))
    assert own["namespace"] == "tenant-a" and own["sets"] >= 3 and own["hits"] >= 1
    assert "tiers" not in own and "index" not in own
    r = runner.invoke(cli, [*base, "stats"])
    assert r.exit_code == 0 and "tenant-a" in r.stdout and "index vectors" not in r.stdout
    # the index's commands are the admin's
    r = runner.invoke(cli, [*base, "index", "check"])
    assert r.exit_code == 1 and "admin" in r.stderr and "HTTP 403" in r.stderr


def test_admin_stats_and_index(runner, seeded):
    base = ["--server", seeded.url, "--token", ADMIN]
    stats = js(runner.invoke(cli, [*base, "stats", "--json"]))
    assert stats["sets"] >= 4 and "hits_by" in stats
    human = runner.invoke(cli, [*base, "stats"])
    assert "hit rate" in human.stdout and "money saved" in human.stdout
    assert js(runner.invoke(cli, [*base, "index", "check", "--json"]))["consistent"] is True
    assert js(runner.invoke(cli, [*base, "index", "rebuild", "--json"]))["vectors"] == 4


def test_invalidate_is_confined_to_the_tenant(runner, seeded, monkeypatch):
    monkeypatch.setattr("semcache.cli.invalidate._stdin_is_terminal", lambda: True)
    a = ["--server", seeded.url, "--token", TENANT_A]
    b = ["--server", seeded.url, "--token", TENANT_B]
    assert js(
        runner.invoke(cli, [*a, "invalidate", "--tag", "support", "--dry-run", "--json"])
    ) == {"matched": 2, "dry_run": True}
    r = runner.invoke(
        cli, [*a, "invalidate", "--tag", "support", "--confirm-over", "1"], input="y\n"
    )
    assert r.exit_code == 0 and "removed 2 entries" in r.stdout
    # B's support entry is still there; B removes its own with the same command
    assert js(runner.invoke(cli, [*b, "invalidate", "--tag", "support", "--json"])) == {
        "removed": 1
    }
    assert js(runner.invoke(cli, [*b, "flush", "--yes", "--json"])) == {"removed": 0}
    assert len(js(runner.invoke(cli, [*a, "ls", "--json"]))["entries"]) == 1


def test_flush_says_how_many_entries_and_which_sidecar(runner, seeded, monkeypatch):
    monkeypatch.setattr("semcache.cli.invalidate._stdin_is_terminal", lambda: True)
    a = ["--server", seeded.url, "--token", TENANT_A]
    r = runner.invoke(cli, [*a, "flush"], input="n\n")
    assert r.exit_code == 1, r.output
    assert f"remove 3 entries (every entry of this token's tenant, tenant-a) from the sidecar at {seeded.url}?" in r.stderr
    r = runner.invoke(cli, ["--server", seeded.url, "--token", ADMIN, "flush"], input="n\n")
    assert f"remove all 4 entries from the sidecar at {seeded.url}?" in r.stderr
    monkeypatch.setattr("semcache.cli.invalidate._stdin_is_terminal", lambda: False)
    r = runner.invoke(cli, [*a, "flush"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: flush would remove 3 entries") and "pass --yes" in r.stderr
    assert len(js(runner.invoke(cli, [*a, "ls", "--json"]))["entries"]) == 3  # nothing removed
    page = runner.invoke(cli, [*a, "ls", "--limit", "2", "--page", "2"])
    assert page.stdout.splitlines()[-1] == "(showing 3\u20133 of 3, page 2)"


def test_remote_errors(runner, seeded):
    r = runner.invoke(cli, ["--server", seeded.url, "ls"])
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "--token" in r.stderr
    r = runner.invoke(cli, ["--server", seeded.url, "--token", TENANT_A, "show", "f" * 32])
    assert r.exit_code == 3 and r.stderr.strip() == f"Error: no entry {'f' * 32}"
    r = runner.invoke(
        cli, ["--server", seeded.url, "--token", TENANT_A, "invalidate", "--namespace", "tenant-b"]
    )
    assert r.exit_code == 1 and "own namespace" in r.stderr


def test_environment_names_the_sidecar(runner, seeded):
    r = runner.invoke(
        cli, ["ls", "--json"], env={"SEMCACHE_SERVER": seeded.url, "SEMCACHE_TOKEN": TENANT_A}
    )
    assert len(js(r)["entries"]) == 3


@pytest.mark.redis
def test_local_store_with_redis(runner, tmp_path, redis_url, key_prefix):
    """--redis-url adds L2: invalidation reaches Redis too, under this test's own key prefix."""
    from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SemanticCache, SQLConfig
    from semcache.embedders import HashingEmbedder

    sql = f"sqlite:///{tmp_path}/r.db"
    cfg = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=redis_url, prefix=key_prefix),
        sql=SQLConfig(url=sql),
        embedder=HashingEmbedder(64),
        policy=Policy(verifier=None),
    )
    with SemanticCache(cfg) as c:
        c.set("cached in redis too", "v", tags=["r"], ttl_seconds=600)
        c.set("another one", "w", ttl_seconds=600)
    base = ["--sql-url", sql, "--redis-url", redis_url, "--redis-prefix", key_prefix]
    stats = js(runner.invoke(cli, [*base, "stats", "--json"]))
    assert stats["entries"] == 2 and "l2" in stats["tiers"]
    assert js(runner.invoke(cli, [*base, "invalidate", "--tag", "r", "--json"])) == {"removed": 1}
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        def live() -> list[str]:
            # entries, not the tombstones invalidations leave (version, then E or T)
            names = list(client.scan_iter(match=f"{key_prefix}e:*"))
            return [n.decode() for n, v in zip(names, client.mget(names) if names else []) if v and v[20:21] == b"E"]

        assert len(live()) == 1  # only "another one" is left in L2
        assert js(runner.invoke(cli, [*base, "flush", "--yes", "--json"])) == {"removed": 1}
        assert live() == []
    finally:
        client.close()
