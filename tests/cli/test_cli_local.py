"""The ``semcache`` CLI against a real SQLite database, through click's runner."""

from __future__ import annotations

import json

import pytest

from semcache.cli.main import cli
from semcache.db.migrate import head_revision


def run(runner, *args, input=None):
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


def js(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_db_upgrade_and_current(runner, tmp_path):
    url = f"sqlite:///{tmp_path}/new.db"
    r = run(runner, "--sql-url", url, "db", "current")
    assert r.exit_code == 3 and "no database" in r.stderr  # not created behind the user's back
    r = run(runner, "--sql-url", url, "db", "upgrade")
    assert r.exit_code == 0 and head_revision() in r.stdout
    data = js(run(runner, "--sql-url", url, "db", "current", "--json"))
    assert data["current"] == data["head"] == head_revision() and data["up_to_date"] is True
    r = run(runner, "db", "current", "--url", url)
    assert "up to date" in r.stdout


def test_stats(runner, sqlite_db):
    data = js(run(runner, "--sql-url", sqlite_db, "stats", "--json"))
    assert data["target"] == "local" and data["entries"] == 5
    assert (
        data["tiers"]["l3"]["entries_live"] == 5
        and data["tiers"]["l3"]["schema_revision"] == head_revision()
    )
    human = run(runner, "stats", "--sql-url", sqlite_db)  # options also after the command
    assert human.exit_code == 0 and "entries_live" in human.stdout and "5" in human.stdout


def test_ls_filters_and_pages(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "ls"]
    everything = js(run(runner, *base, "--json"))["entries"]
    assert len(everything) == 5
    geo = js(run(runner, *base, "--tag", "geo", "--json"))["entries"]
    assert sorted(e["prompt"] for e in geo) == [
        "What is the capital of France?",
        "What is the capital of Italy?",
    ]
    assert len(js(run(runner, *base, "--model", "m2", "--json"))["entries"]) == 3
    assert [e["namespace"] for e in js(run(runner, *base, "-n", "acme", "--json"))["entries"]] == [
        "acme"
    ]
    old = js(run(runner, *base, "--older-than", "7d", "--json"))["entries"]
    assert [e["prompt"] for e in old] == ["An old question about billing"]
    assert len(js(run(runner, *base, "--pattern", "*capital*", "--json"))["entries"]) == 2
    page1 = js(run(runner, *base, "--limit", "2", "--json"))["entries"]
    page3 = js(run(runner, *base, "--limit", "2", "--page", "3", "--json"))["entries"]
    assert len(page1) == 2 and len(page3) == 1 and page1[0]["entry_id"] != page3[0]["entry_id"]
    table = run(runner, *base, "--limit", "2")
    assert table.stdout.splitlines()[0].split() == [
        "ID",
        "AGE",
        "TTL",
        "MODEL",
        "NAMESPACE",
        "TAGS",
        "PROMPT",
    ]
    assert "next: --page 2" in table.stdout
    assert "no entries" in run(runner, *base, "--tag", "nope").stdout
    bad = run(runner, *base, "--older-than", "soon")
    assert bad.exit_code == 2 and "duration" in bad.stderr


def test_show(runner, sqlite_db):
    entry = js(run(runner, "--sql-url", sqlite_db, "ls", "--tag", "support", "--json"))["entries"][
        0
    ]
    data = js(run(runner, "--sql-url", sqlite_db, "show", entry["entry_id"], "--json"))
    assert data["value"] == {"steps": 3} and data["model"] == "m2" and data["tags"] == ["support"]
    human = run(runner, "--sql-url", sqlite_db, "show", entry["entry_id"])
    assert '"steps": 3' in human.stdout and "How do I reset my password?" in human.stdout
    missing = run(runner, "--sql-url", sqlite_db, "show", "0" * 32)
    assert missing.exit_code == 3 and missing.stderr.strip() == f"Error: no entry {'0' * 32}"


def test_lookup_and_explain(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "--embedder", "hashing"]
    hit = js(
        run(runner, *base, "lookup", "What is the capital of France?", "--model", "m1", "--json")
    )
    assert hit["hit"] and hit["kind"] == "exact" and hit["value"] == "Paris"
    near = js(
        run(
            runner,
            *base,
            "lookup",
            "what is the capital of france",
            "--model",
            "m1",
            "--threshold",
            "0.8",
            "--json",
        )
    )
    assert near["hit"] and near["kind"] == "semantic"
    miss = run(runner, *base, "lookup", "What is the capital of France?", "--model", "m2")
    assert miss.exit_code == 0 and miss.stdout.startswith("miss")

    explained = js(
        run(
            runner,
            *base,
            "lookup",
            "what is the capital of france?",
            "--model",
            "m1",
            "--explain",
            "--json",
        )
    )
    assert (
        explained["candidates"]
        and {"similarity", "guards", "decision", "passed_threshold"}
        <= explained["candidates"][0].keys()
    )

    from semcache import CacheConfig, Policy, SemanticCache, SQLConfig
    from semcache.embedders import HashingEmbedder

    with SemanticCache(
        CacheConfig(
            sql=SQLConfig(url=sqlite_db), embedder=HashingEmbedder(64), policy=Policy(verifier=None)
        )
    ) as c:
        c.set("Flights from Paris to Rome", "AF123", ttl_seconds=None)
    table = run(
        runner, *base, "lookup", "Flights from Rome to Paris", "--explain", "--threshold", "0.5"
    )
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["SIMILARITY", ">=THR", "CHECKS", "DECISION", "ENTRY", "PROMPT"]
    # similar enough, but the swapped cities are caught: the table names the failed check
    assert (
        "order:FAIL" in lines[2]
        and "rejected by guard order" in lines[2]
        and "Flights from Paris to Rome" in lines[2]
    )
    assert lines[-1] == "decision: miss"


def test_invalidate_dry_run_confirmation_and_criteria(runner, sqlite_db, monkeypatch):
    base = ["--sql-url", sqlite_db, "invalidate"]
    assert js(run(runner, *base, "--model", "m2", "--dry-run", "--json")) == {
        "matched": 3,
        "dry_run": True,
    }
    assert run(runner, *base, "--model", "m2", "--dry-run").stdout == "would remove 3 entries\n"
    assert run(runner, *base, "--tag", "support", "--dry-run").stdout == "would remove 1 entry\n"
    # more than --confirm-over on a terminal: asks, naming the count and the database;
    # "n" removes nothing
    monkeypatch.setattr("semcache.cli.invalidate._stdin_is_terminal", lambda: True)
    r = run(runner, *base, "--model", "m2", "--confirm-over", "2", input="n\n")
    assert r.exit_code == 1 and f"remove 3 entries from {sqlite_db}?" in r.stderr
    assert "Error: not confirmed: nothing removed" in r.stderr and "Aborted!" not in r.output
    assert js(run(runner, "--sql-url", sqlite_db, "stats", "--json"))["entries"] == 5
    r = run(runner, *base, "--model", "m2", "--confirm-over", "2", input="y\n")
    assert r.exit_code == 0 and "removed 3 entries" in r.stdout
    r = run(runner, *base, "--tag", "geo", "--pattern", "*Italy*")
    assert r.stdout == "removed 1 entry\n"
    remaining = js(run(runner, "--sql-url", sqlite_db, "ls", "--json"))["entries"]
    assert [e["prompt"] for e in remaining] == ["What is the capital of France?"]
    eid = remaining[0]["entry_id"]
    assert js(run(runner, *base, "--id", eid, "--json")) == {"removed": 1}
    r = run(runner, *base)
    assert r.exit_code == 2 and "name at least one" in r.stderr


def test_invalidate_by_exact_prompt_and_age(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "invalidate", "--json"]
    assert js(
        run(runner, *base, "--prompt", "What is the capital of France?", "--model", "m1")
    ) == {"removed": 1}
    assert js(run(runner, *base, "--older-than", "1w")) == {"removed": 1}
    assert js(run(runner, "--sql-url", sqlite_db, "stats", "--json"))["entries"] == 3


def test_flush_asks_unless_yes(runner, sqlite_db, monkeypatch):
    r = run(runner, "--sql-url", sqlite_db, "flush")  # not a terminal: nothing to ask on
    assert r.exit_code == 1 and r.stderr == (
        f"Error: flush would remove all 5 entries from {sqlite_db}, and stdin is not a terminal to ask on: pass --yes\n"
    )
    monkeypatch.setattr("semcache.cli.invalidate._stdin_is_terminal", lambda: True)
    r = run(runner, "--sql-url", sqlite_db, "flush", input="n\n")
    assert r.exit_code == 1 and f"remove all 5 entries from {sqlite_db}?" in r.stderr
    assert js(run(runner, "--sql-url", sqlite_db, "flush", "--yes", "--json")) == {"removed": 5}
    assert js(run(runner, "--sql-url", sqlite_db, "stats", "--json"))["entries"] == 0


def test_index_rebuild_and_check(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "--embedder", "hashing", "index"]
    check = js(run(runner, *base, "check", "--json"))
    assert check["consistent"] is True and check["index"] == 5
    r = run(runner, *base, "rebuild", "--progress")
    assert r.exit_code == 0 and "index holds 5 vectors" in r.stdout
    # another embedder's vectors are not this one's: the check says so, and a rebuild with --reembed repairs it
    other = ["--sql-url", sqlite_db, "--embedder", "hashing:32", "index"]
    note = run(runner, *other, "check")
    assert note.exit_code == 0 and "5 live entries have no vector from hashing-32" in note.stdout
    assert js(run(runner, *other, "rebuild", "--reembed", "--json")) == {"vectors": 5}
    assert js(run(runner, *other, "check", "--json"))["consistent"] is True


def test_errors_are_one_line_without_traceback(runner, tmp_path):
    cases = [
        (["--sql-url", "mysql://x", "stats"], 1, "SQL URL scheme"),
        (["--sql-url", f"sqlite:///{tmp_path}/absent.db", "ls"], 3, "no database"),
        (["--server", "http://127.0.0.1:9", "stats"], 4, "cannot reach the sidecar"),
        (["--config", str(tmp_path / "missing.toml"), "stats"], 1, "cannot read the config file"),
    ]
    for args, code, text in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == code, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and text in lines[0], (
            args,
            r.stderr,
        )
        assert "Traceback" not in r.output


def test_old_schema_says_what_to_run(runner, tmp_path):
    import sqlite3

    from semcache.db.migrate import upgrade

    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url)
    con = sqlite3.connect(tmp_path / "old.db")
    con.execute("UPDATE alembic_version SET version_num = 'ffff_unknown'")
    con.commit()
    con.close()
    r = runner.invoke(cli, ["--sql-url", url, "stats"])
    assert r.exit_code == 1 and r.stderr.startswith("Error:") and "Traceback" not in r.output


@pytest.mark.parametrize("args", [["--help"], ["db", "--help"], ["index", "--help"], ["--version"]])
def test_help(runner, args):
    r = run(runner, *args)
    assert r.exit_code == 0 and r.stdout


def test_bench_lists_the_benchmarks(runner, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    r = run(runner, "bench", "--list")
    assert r.exit_code == 0 and "sidecar_load" in r.stdout.split()
    r = runner.invoke(cli, ["bench", "nope"])
    assert r.exit_code == 3 and "no benchmark" in r.stderr


@pytest.mark.parametrize("module", ["semcache", "semcache.cli.main"])
def test_python_dash_m_entry_points(module, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("semcache ")
    bad = subprocess.run(
        [sys.executable, "-m", module, "--sql-url", f"sqlite:///{tmp_path}/none.db", "ls"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert (
        bad.returncode == 3
        and bad.stderr.count("\n") == 1
        and bad.stderr.startswith("Error: no database")
    )


def test_main_turns_an_unexpected_error_into_one_line(monkeypatch, capsys, sqlite_db):
    from semcache.cli import main as cli_main
    from semcache.cli.targets import LocalTarget

    def boom(self):
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(LocalTarget, "stats", boom)
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["--sql-url", sqlite_db, "stats"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "RuntimeError: something nobody expected with a second line" in err
    )
    assert "Traceback" not in err


# a port nothing listens on: Redis there is unreachable
_DEAD_REDIS = "redis://127.0.0.1:1/0"


def test_invalidate_and_flush_fail_when_a_tier_is_unreachable(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "--redis-url", _DEAD_REDIS]
    r = run(runner, *base, "invalidate", "--tag", "geo")
    assert r.exit_code == 4, r.output
    assert "l2" in r.stderr and "invalidation" in r.stderr and "removed 2" not in r.stdout
    r = run(runner, *base, "flush", "--yes")
    assert r.exit_code == 4, r.output
    assert "l2" in r.stderr and "flush" in r.stderr


def test_stats_shows_an_unreachable_tier_as_down(runner, sqlite_db):
    data = js(run(runner, "--sql-url", sqlite_db, "--redis-url", _DEAD_REDIS, "stats", "--json"))
    assert data["tiers"]["l2"]["status"].startswith("down")
    assert data["tiers"]["l3"]["status"] == "ok" and data["tiers"]["l3"]["entries_live"] == 5


def test_serve_on_a_port_in_use_is_a_plain_error(runner, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(
            runner,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--sql-url",
            f"sqlite:///{tmp_path}/serve.db",
            "--embedder",
            "none",
        )
    assert r.exit_code == 1, r.output  # not 3, which means "not found"
    assert "could not start" in r.stderr and str(port) in r.stderr
