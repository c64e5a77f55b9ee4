"""``semcache model export``: the first export, announced with its time, then reused."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _semcache(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HOME": str(cwd),
    }
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "semcache", *args], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )
    return done, time.perf_counter() - t0


@pytest.mark.model
@pytest.mark.slow
def test_model_export_says_what_it_does_then_reuses_it(tmp_path):
    onnx_dir = tmp_path / "onnx"
    stale = onnx_dir / "all-MiniLM-L6-v2-0123456789abcdef"  # a copy of the old layout
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"old graph")

    first, seconds = _semcache("model", "export", "--onnx-dir", str(onnx_dir), cwd=tmp_path)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"first export: {seconds:.1f}s, peak RSS {peak_mb:.0f} MB\n{first.stderr}")
    assert first.returncode == 0, first.stderr
    notes = first.stderr.splitlines()
    assert notes[0].startswith("semcache: exporting all-MiniLM-L6-v2 to ONNX"), first.stderr
    assert any(n.startswith("semcache: ONNX export of all-MiniLM-L6-v2 done in ") for n in notes)
    assert f"semcache: removed 1 stale ONNX export(s): {stale.name}" in notes
    assert "Loading weights" not in first.stderr + first.stdout  # no stray progress bar
    assert first.stdout.startswith("exported in ")
    path = Path(first.stdout.split(": ", 1)[1].strip())
    assert path.is_file() and path.parent.parent == onnx_dir and not stale.exists()
    assert json.loads((path.parent / "export.json").read_text())["sources"]

    again, seconds = _semcache("model", "export", "--onnx-dir", str(onnx_dir), "--json", cwd=tmp_path)
    print(f"second run: {seconds:.1f}s")
    data = json.loads(again.stdout)
    assert again.returncode == 0 and data["exported"] is False and data["path"] == str(path)
    assert "exporting" not in again.stderr
    assert set(os.listdir(onnx_dir)) == {path.parent.name, ".weight-hashes.json"}
