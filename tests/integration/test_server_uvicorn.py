"""A real ``semcache serve`` process on a free port: the README's flow, the ``openai`` client
(streaming included) against the proxy with the stand-in upstream, metrics, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.upstream import StandInUpstream

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``python -m semcache serve`` in a child process; ``url`` is read from what it prints."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
        full_env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semcache", "serve", "--port", "0", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.url = self._wait()

    def _wait(self, timeout: float = 90.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise AssertionError("serve exited:\n" + "".join(self.lines))
                continue
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                return m.group(1)
        raise AssertionError("serve did not print where it listens:\n" + "".join(self.lines))

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down gracefully (uvicorn re-raises the signal after)."""
        self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=30)
        self.lines.append(rest)
        return self.proc.returncode in (0, -signal.SIGTERM) and "Finished server process" in rest


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandInUpstream]:
    with StandInUpstream(delay_seconds=0.05, chunk_delay_seconds=0.001) as up:
        yield up


@pytest.fixture
def served(tmp_path, upstream) -> Iterator[ServeProcess]:
    env = {
        "SEMCACHE_EMBEDDER": "hashing",
        "SEMCACHE_VERIFIER": "none",
        "SEMCACHE_THRESHOLD": "0.8",
        "SEMCACHE_TOKENS": "tok-a=tenant-a,tok-b=tenant-b",
        "SEMCACHE_ADMIN_TOKEN": "tok-admin",
        "SEMCACHE_UPSTREAM_URL": upstream.base_url,
        "SEMCACHE_UPSTREAM_API_KEY": "sk-upstream",
    }
    sp = ServeProcess(tmp_path, [], env)
    yield sp
    assert sp.stop()


def test_openai_client_against_the_proxy(served, upstream):
    upstream.reset()
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="tok-a", max_retries=0)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.with_raw_response.create(model="stand-in-1", messages=msgs)
    assert first.headers["x-semcache"] == "miss"
    answer = first.parse().choices[0].message.content
    second = client.chat.completions.with_raw_response.create(model="stand-in-1", messages=msgs)
    assert second.headers["x-semcache"] == "hit" and second.headers["x-semcache-kind"] == "exact"
    assert second.parse().choices[0].message.content == answer

    # streaming: a replayed hit, then a streamed miss that is stored
    with client.chat.completions.create(model="stand-in-1", messages=msgs, stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
    fresh = [{"role": "user", "content": "Name three rivers in Europe"}]
    with client.chat.completions.create(model="stand-in-1", messages=fresh, stream=True) as stream:
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed.startswith("answer 2:")
    again = client.chat.completions.with_raw_response.create(model="stand-in-1", messages=fresh)
    assert (
        again.headers["x-semcache"] == "hit"
        and again.parse().choices[0].message.content == streamed
    )
    assert upstream.calls == 2

    # another tenant never gets tenant-a's answer
    other = openai.OpenAI(base_url=served.url + "/v1", api_key="tok-b", max_retries=0)
    assert (
        other.chat.completions.with_raw_response.create(model="stand-in-1", messages=msgs).headers[
            "x-semcache"
        ]
        == "miss"
    )


def test_json_api_metrics_and_auth_over_http(served):
    h = {"authorization": "Bearer tok-a"}
    with httpx.Client(base_url=served.url, timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json()["status"] == "ready"
        r = c.post(
            "/v1/entries",
            json={"prompt": "How do I reset my password?", "value": "Use the link."},
            headers=h,
        )
        assert r.status_code == 201
        hit = c.post("/v1/lookup", json={"prompt": "how do i reset my password"}, headers=h).json()
        assert hit["hit"] and hit["kind"] == "semantic" and hit["value"] == "Use the link."
        assert c.post("/v1/lookup", json={"prompt": "x"}).status_code == 401
        assert (
            c.post(
                "/v1/lookup", content=b"{", headers={**h, "content-type": "application/json"}
            ).status_code
            == 422
        )
        assert c.post("/v1/lookup", content=b"x" * (2 * 1024 * 1024), headers=h).status_code == 413
        metrics = c.get("/metrics").text
        assert 'semcache_hits_total{kind="semantic",tier="l1"} 1.0' in metrics
        assert "semcache_embedding_batch_size_bucket" in metrics


def test_default_serve_generates_an_admin_token(tmp_path):
    """No tokens configured: auth stays on with a printed one-off admin token (the README's first command)."""
    sp = ServeProcess(tmp_path, [], {"SEMCACHE_EMBEDDER": "hashing", "SEMCACHE_VERIFIER": "none"})
    try:
        out = "".join(sp.lines)
        token = re.search(r"SEMCACHE_TOKEN=(\S+)", out)
        assert token is not None, out
        assert (tmp_path / "semcache.db").exists()  # the embedded default: SQLite in the cwd
        with httpx.Client(base_url=sp.url) as c:
            assert c.get("/v1/stats").status_code == 401
            assert (
                c.get(
                    "/v1/stats", headers={"authorization": f"Bearer {token.group(1)}"}
                ).status_code
                == 200
            )
    finally:
        assert sp.stop()


def test_no_auth_must_be_explicit_and_warns(tmp_path):
    sp = ServeProcess(tmp_path, ["--no-auth"], {"SEMCACHE_EMBEDDER": "hashing", "SEMCACHE_VERIFIER": "none"})
    try:
        assert any("auth is OFF" in line for line in sp.lines)
        with httpx.Client(base_url=sp.url) as c:
            assert c.get("/v1/stats").status_code == 200
    finally:
        assert sp.stop()


def test_serve_with_a_bad_setting_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), SEMCACHE_SQL_URL="mysql://nope")
    r = subprocess.run(
        [sys.executable, "-m", "semcache", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
