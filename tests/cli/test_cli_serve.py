"""``semcache serve`` and scripts/serve.sh as processes; a local invalidation against a running sidecar."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from semcache.cli.main import cli
from semcache.server.app import create_app
from tests._sidecar import TENANT_A, SidecarThread, auth, server_config

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream) -> queue.Queue[str]:
    """The lines of ``stream``, read in a thread (so a wait for one can have a deadline)."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)
        out.put("")  # the end

    threading.Thread(target=pump, daemon=True).start()
    return out


def _wait_for(lines: queue.Queue[str], text: str, seconds: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {seconds}s; saw {seen}")


def test_serve_sh_serves_in_the_callers_directory_and_ctrl_c_stops_it_quietly(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "SEMCACHE_VENV": sys.prefix,  # the environment these tests run in has what serving needs
        "PYTHONPATH": str(ROOT),  # this checkout's package
        "SEMCACHE_VERIFIER": "none",
    }
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve.sh"), "--port", "0", "--no-auth", "--embedder", "none"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            _wait_for(_lines(proc.stdout), "semcache: listening on http://127.0.0.1:", 120)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.stderr.read()) from None
        assert (tmp_path / "semcache.db").is_file()  # the caller's directory, as the README says
        proc.send_signal(signal.SIGINT)  # serve.sh execs the server: this is Ctrl-C
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 130, err
    assert err.rstrip().endswith("semcache: stopped"), err
    assert "Aborted!" not in err and "Traceback" not in err and "[setup]" not in err


def test_serve_sh_installs_only_what_serving_needs(tmp_path):
    calls = tmp_path / "calls.log"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    # a stand-in interpreter: nothing is importable, and every call is written down
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1" == - ]]; then cat >/dev/null; echo semcache uvicorn; exit 0; fi\n'
        f'echo "$PWD :: $*" >> "{calls}"\n'
    )
    fake.chmod(0o755)
    caller = tmp_path / "somewhere"
    caller.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SEMCACHE_VENV": str(venv)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "serve.sh"), "--port", "9"],
        cwd=caller, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "missing: semcache uvicorn" in done.stderr
    made = calls.read_text().splitlines()
    assert made == [
        f"{caller} :: -m pip install -q torch==2.13.0",
        f"{caller} :: -m pip install -q -e {ROOT}[embed,server,cli]",  # no test extra
        f"{caller} :: -m semcache.cli.main serve --port 9",  # in the caller's directory
    ]


def test_a_local_invalidate_and_flush_reach_a_running_sidecar_within_the_log_poll(runner, tmp_path):
    cfg = server_config(tmp_path)
    url = cfg.cache.sql.url
    bound = cfg.cache.policy.log_poll_seconds
    assert bound is not None
    # the bound, plus room for a busy machine: a sidecar that never polled would fail it
    deadline_s = bound + 5.0

    def lookup(client: httpx.Client, prompt: str) -> bool:
        r = client.post("/v1/lookup", json={"prompt": prompt, "model": "m"}, headers=auth(TENANT_A))
        r.raise_for_status()
        return bool(r.json()["hit"])

    def missed_within(client: httpx.Client, prompt: str) -> float:
        t0 = time.monotonic()
        while lookup(client, prompt):
            assert time.monotonic() - t0 < deadline_s, f"still a hit after {deadline_s}s"
        return time.monotonic() - t0

    with SidecarThread(create_app(cfg)) as sc, httpx.Client(base_url=sc.url, timeout=30) as c:
        for prompt in ("How do I reset my password?", "What are your opening hours?"):
            body = {"prompt": prompt, "value": "v", "model": "m", "tags": ["t"]}
            c.post("/v1/entries", json=body, headers=auth(TENANT_A)).raise_for_status()
        assert lookup(c, "How do I reset my password?") and lookup(c, "how do i reset my password")
        r = runner.invoke(cli, ["--sql-url", url, "invalidate", "--prompt", "How do I reset my password?",
                                "--model", "m", "-n", "tenant-a"])  # fmt: skip
        assert r.exit_code == 0 and r.stdout == "removed 1 entry\n", r.output
        exact = missed_within(c, "How do I reset my password?")
        assert not lookup(c, "how do i reset my password")  # the index let go of it too
        assert lookup(c, "What are your opening hours?")
        r = runner.invoke(cli, ["--sql-url", url, "flush", "--yes"])
        assert r.exit_code == 0 and r.stdout == "removed 1 entry\n", r.output
        flushed = missed_within(c, "What are your opening hours?")
    print(f"sidecar missed {exact:.2f}s after the local invalidate, {flushed:.2f}s after the flush")
    assert os.path.exists(url.removeprefix("sqlite:///"))
