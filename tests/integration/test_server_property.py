"""The sidecar keeps every promise of its own OpenAPI document: schemathesis runs all of its
phases (examples, coverage, fuzzing, stateful: store -> get -> delete through the document's
links) with all of its checks against a live sidecar (real uvicorn, a stand-in upstream
behind the proxy), as a tenant and as the admin, and finds nothing.

The checks include: no 5xx; every status, content type, header and body as documented;
schema-valid requests accepted and schema-violating ones rejected (so every rule a route
enforces is in the schema); 405 with a correct ``Allow`` for undocumented methods; 401
without a token; a deleted entry gone and a created one there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, SidecarThread, server_config
from tests.upstream import StandInUpstream

#: Examples per operation and phase: enough to find the usual suspects, bounded for 2 cores
#: (both runs together take well under 2 minutes).
EXAMPLES = 25


@pytest.fixture(scope="module")
def sidecar_url(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("property")
    with StandInUpstream(delay_seconds=0, chunk_delay_seconds=0) as upstream:
        cfg = server_config(tmp, upstream_url=upstream.base_url, max_body_bytes=64 * 1024)
        with SidecarThread(create_app(cfg)) as sc:
            yield sc.url


def schemathesis_run(url: str, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` with every check and every phase; its exit status is 0 when
    nothing failed."""
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "7",
        "--workers",
        "1",
        "--suppress-health-check",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("token", [TENANT_A, ADMIN], ids=["tenant", "admin"])
def test_the_sidecar_keeps_its_openapi_document(sidecar_url: str, token: str, tmp_path: Path) -> None:
    run = schemathesis_run(sidecar_url, token, tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    # it ran every phase and found nothing (not: tested nothing)
    assert "Stateful" in out and "Coverage" in out and "Fuzzing" in out, out[-5000:]
    assert " passed" in out and "failures" not in out.split("SUMMARY")[-1].lower(), out[-5000:]
    assert "API Links:" in out  # the stateful phase followed the document's links
