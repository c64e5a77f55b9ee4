"""``semcache bench`` from an installed wheel, far from any checkout: it lists the
benchmarks and runs the default one (a short ``sidecar_load``), which prints its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this tree, unpacked with ``pip install --target`` (no dependencies:
    they come from this environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(ROOT)], tmp, env, 300)
    (wheel,) = (tmp / "dist").glob("semcache_llm-*.whl")
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], tmp, env, 300)
    assert not (site / "benchmarks").exists()
    return site


@pytest.fixture
def env(installed: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    out.update(PYTHONPATH=str(installed), HF_HUB_OFFLINE="1")
    return out


def test_the_wheel_is_what_runs(installed: Path, env: dict[str, str], tmp_path: Path) -> None:
    out = _run([sys.executable, "-c", "import semcache.bench, semcache; print(semcache.__file__)"], tmp_path, env)
    assert Path(out.strip()).is_relative_to(installed)


def test_bench_lists_the_installed_benchmarks(env: dict[str, str], tmp_path: Path) -> None:
    out = _run([sys.executable, "-m", "semcache", "bench", "--list"], tmp_path, env)
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names[0] == "sidecar_load" and {"api", "tiers", "semantic_speed", "scale"} <= set(names)
    assert "[source checkout only]" in next(line for line in out.splitlines() if line.startswith("verifier "))


def test_the_default_benchmark_runs_from_the_wheel(env: dict[str, str], tmp_path: Path) -> None:
    env = dict(env, SEMCACHE_VERIFIER="none")  # the toy embedder: cosine alone decides
    cmd = [sys.executable, "-m", "semcache", "bench", "sidecar_load", "--clients", "4", "--seconds", "1",
           "--max-requests", "400", "--only", "on", "--embedder", "hashing"]
    out = _run(cmd, tmp_path, env, timeout=180)
    assert out.startswith("sidecar load: 4 clients"), out
    row = next(line for line in out.splitlines() if line.startswith("batching on"))
    rate, *_, requests, errors = row.removeprefix("batching on").split()
    assert float(rate) > 0 and int(requests) > 0 and int(errors) == 0, out
    assert re.search(r"\d+\.\d%", row), row  # the hit rate
