"""What the CLI says: confirmations, plurals, pages, timestamps, upgrades, errors first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from semcache.cli.main import cli
from semcache.db.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]
# a port nothing listens on: Redis there is unreachable
DEAD_REDIS = "redis://127.0.0.1:1/0"


def run(runner, *args, input=None):
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


def js(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_invalidate_over_the_limit_without_a_terminal_says_pass_yes(runner, sqlite_db):
    r = run(runner, "--sql-url", sqlite_db, "invalidate", "--model", "m2", "--confirm-over", "2")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: 3 entries match, more than --confirm-over 2, and stdin is not a terminal to ask on: pass --yes\n"
    )
    assert "Aborted!" not in r.output
    assert js(run(runner, "--sql-url", sqlite_db, "stats", "--json"))["entries"] == 5
    r = run(runner, "--sql-url", sqlite_db, "invalidate", "--model", "m2", "--confirm-over", "2", "--yes")
    assert r.exit_code == 0 and r.stdout == "removed 3 entries\n"


def test_show_prints_iso_utc_and_json_keeps_the_float(runner, sqlite_db):
    entry = js(run(runner, "--sql-url", sqlite_db, "ls", "--tag", "support", "--json"))["entries"][0]
    data = js(run(runner, "--sql-url", sqlite_db, "show", entry["entry_id"], "--json"))
    assert isinstance(data["created_at"], float)
    human = run(runner, "--sql-url", sqlite_db, "show", entry["entry_id"]).stdout
    line = next(x for x in human.splitlines() if x.startswith("created_at"))
    stamp = line.split()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), line
    want = datetime.fromtimestamp(data["created_at"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert stamp == want
    expires = next(x for x in human.splitlines() if x.startswith("expires_at")).split()[-1]
    assert expires.endswith("Z") and expires > stamp


def test_ls_says_which_entries_of_how_many(runner, sqlite_db):
    base = ["--sql-url", sqlite_db, "ls", "--limit", "2"]
    assert run(runner, *base).stdout.splitlines()[-1] == "(showing 1\u20132 of 5, page 1; next: --page 2)"
    assert run(runner, *base, "--page", "3").stdout.splitlines()[-1] == "(showing 5\u20135 of 5, page 3)"
    assert run(runner, *base, "--model", "m2").stdout.splitlines()[-1] == (
        "(showing 1\u20132 of 3, page 1; next: --page 2)"
    )
    assert run(runner, *base, "--page", "4").stdout == "no entries on page 4 (of 5 entries)\n"
    data = js(run(runner, *base, "--json"))
    assert list(data) == ["entries", "page", "limit", "total"]  # the old keys, and the total
    assert (len(data["entries"]), data["page"], data["limit"], data["total"]) == (2, 1, 2, 5)


def test_db_upgrade_says_whether_it_changed_anything(runner, tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.db"
    first = run(runner, "db", "upgrade", "--url", url)
    assert first.exit_code == 0
    assert first.stdout == f"{url}: upgraded from an empty database to revision {head_revision()}\n"
    again = run(runner, "db", "upgrade", "--url", url)
    assert again.stdout == f"{url}: already at revision {head_revision()}, nothing to do\n"
    data = js(run(runner, "db", "upgrade", "--url", url, "--json"))
    assert data["changed"] is False and data["previous"] == data["revision"] == head_revision()


def test_plurals(runner, sqlite_db):
    base = ["--sql-url", sqlite_db]
    assert run(runner, *base, "invalidate", "--tag", "billing").stdout == "removed 1 entry\n"
    assert run(runner, *base, "invalidate", "--tag", "nope").stdout == "removed 0 entries\n"
    assert run(runner, *base, "invalidate", "--tag", "geo", "--dry-run").stdout == "would remove 2 entries\n"
    run(runner, *base, "invalidate", "--model", "m2", "--yes")
    run(runner, *base, "invalidate", "--tag", "geo", "--pattern", "*Italy*")
    idx = run(runner, *base, "--embedder", "hashing", "index", "rebuild", "--no-progress")
    assert idx.stdout == "index holds 1 vector\n"
    note = run(runner, *base, "--embedder", "hashing:32", "index", "check")
    assert "note: 1 live entry has no vector from hashing-32 (1 carries vectors from hashing-64)" in note.stdout


def test_index_check_names_the_models_the_entries_were_embedded_with(runner, sqlite_db):
    data = js(run(runner, "--sql-url", sqlite_db, "--embedder", "hashing:32", "index", "check", "--json"))
    assert data["consistent"] is True and data["index"] == 0 and data["l3_embedded"] == 0
    assert data["l3_total_live"] == 5 and data["unsearchable"] == 5
    assert data["l3_other_embedders"] == {"hashing-64": 5} and data["l3_without_vector"] == 0
    assert data["fix"] == "semcache index rebuild --reembed"
    # all searchable: none of it
    same = js(run(runner, "--sql-url", sqlite_db, "--embedder", "hashing", "index", "check", "--json"))
    assert "l3_other_embedders" not in same and "fix" not in same


def test_a_tier_back_off_warning_does_not_come_ahead_of_the_error(sqlite_db, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SEMCACHE_VERIFIER": "none"}
    args = [sys.executable, "-m", "semcache", "--sql-url", sqlite_db, "--redis-url", DEAD_REDIS]
    quiet = subprocess.run([*args, "invalidate", "--tag", "geo"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert quiet.returncode == 4
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: tier l2 could not be reached"), quiet.stderr
    loud = subprocess.run([*args, "-v", "invalidate", "--tag", "geo"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert loud.returncode == 4 and "tier l2 is unavailable" in loud.stderr  # -v: the library's warnings too
    assert loud.stderr.splitlines()[-1].startswith("Error: tier l2")


def test_bench_outside_a_checkout_says_what_it_needs(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("semcache.cli.bench._CHECKOUT", tmp_path / "site-packages")  # an installed package
    r = run(runner, "bench", "--list")  # the installed benchmarks need no checkout
    names = [line.split()[0] for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert r.exit_code == 0 and names[0] == "sidecar_load" and "api" in names
    assert "pip install 'semcache-llm[embed,server]'" in r.stdout
    # the two that are scripts of a checkout say what they need, and where to get it
    r = runner.invoke(cli, ["bench", "verifier"])
    assert r.exit_code == 3 and "not installed with the package" in r.stderr and "--dir" in r.stderr
    assert "training/synthetic.py" in r.stderr
    r = runner.invoke(cli, ["bench", "history"])
    assert r.exit_code == 3 and "pip install 'semcache-llm[test]'" in r.stderr
    r = runner.invoke(cli, ["bench", "--dir", str(tmp_path), "verifier"])
    assert r.exit_code == 3 and "holds no bench_verifier.py" in r.stderr
    r = runner.invoke(cli, ["bench", "nope"])
    assert r.exit_code == 3 and "no benchmark 'nope'" in r.stderr


def test_bench_names_the_missing_extra(runner, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    r = runner.invoke(cli, ["bench", "tiers"])
    assert r.exit_code == 1 and "needs the redis extra: pip install 'semcache-llm[embed,redis]'" in r.stderr


def test_bench_runs_a_checkout_script_with_dir(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("semcache.cli.bench._CHECKOUT", tmp_path / "site-packages")
    calls = []
    monkeypatch.setattr("semcache.cli.bench.subprocess.call", lambda cmd, env: calls.append((cmd, env)) or 0)
    r = run(runner, "bench", "--dir", str(ROOT / "benchmarks"), "verifier", "-n", "5")
    assert r.exit_code == 0
    (cmd, env), = calls
    assert cmd[1:] == [str(ROOT / "benchmarks" / "bench_verifier.py"), "-n", "5"]
    r = run(runner, "bench", "api", "-N", "100")
    assert r.exit_code == 0
    cmd, env = calls[-1]
    assert cmd[1:] == ["-m", "semcache.bench.api", "-N", "100"]
    assert env["OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS", "1")


def test_serve_on_a_port_in_use_fails_before_anything_loads(runner, tmp_path, monkeypatch):
    import socket

    def never(*args, **kwargs):
        raise AssertionError("the cache was opened although the port is in use")

    monkeypatch.setattr("semcache.server.run.run_server", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(runner, "serve", "--port", str(port), "--sql-url", f"sqlite:///{tmp_path}/s.db")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: port {port} on 127.0.0.1 is in use"), r.stderr
    assert r.stderr.count("\n") == 1 and "--port" in r.stderr
    assert not (tmp_path / "s.db").exists()


def test_serve_interrupted_while_loading_stops_quietly(runner, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("semcache.server.run.run_server", interrupted)
    r = runner.invoke(cli, ["serve", "--port", "0", "--sql-url", f"sqlite:///{tmp_path}/s.db"])
    assert r.exit_code == 130 and r.stderr == "semcache: stopped\n" and "Aborted!" not in r.output


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_are_held_back_only_during_the_command(runner, sqlite_db, verbose, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    flags = ["-v"] if verbose else []
    run(runner, *flags, "--sql-url", sqlite_db, "--redis-url", DEAD_REDIS, "invalidate", "--tag", "geo")
    backoff = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    assert bool(backoff) is verbose
    assert logging.getLogger("semcache").level == logging.NOTSET  # restored after the command
