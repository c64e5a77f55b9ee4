"""The first ONNX export runs in a child process: the process that serves never imports
torch, and its peak memory stays that of serving the graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semcache.embedders.onnx import export_in_child
from semcache.errors import ConfigurationError, MissingDependencyError

ROOT = Path(__file__).resolve().parents[2]

_COLD_START = """
import json, resource, sys
from semcache import CacheConfig, SQLConfig, SemanticCache

with SemanticCache(CacheConfig(sql=SQLConfig(url=f"sqlite:///{sys.argv[1]}/cache.db"))) as cache:
    cache.set("How do I reset my password?", "Click Forgot password.", model="m")
    hit = cache.get("how can I reset my password", model="m")   # embedded, verified
usage = resource.getrusage
# this process's own peak: VmHWM, not RUSAGE_SELF, whose ru_maxrss carries the peak of the
# process it was forked from across exec (a large test runner's)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({
    "hit": hit.kind if hit else None,
    "loaded": sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules),
    "peak_mb": int(hwm.split()[1]) / 1024,
    "child_peak_mb": usage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


@pytest.mark.model
def test_a_cold_export_never_loads_torch_in_the_serving_process(tmp_path):
    onnx_dir = tmp_path / "onnx"  # nothing exported yet
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), SEMCACHE_ONNX_DIR=str(onnx_dir))
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_START, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(list(onnx_dir.glob("*/model.onnx"))) == 1  # it did export, cold
    assert got["hit"] == "semantic"
    assert got["loaded"] == [], got  # torch, transformers and onnx stayed in the child
    # the child did the heavy lifting (torch alone is several hundred MB) and this
    # process peaked at what serving the graph takes: it was ~860 MB when it exported itself
    assert got["child_peak_mb"] > got["peak_mb"], got
    assert got["peak_mb"] < 600, got


def _fake_packages(root: Path, **modules: str) -> Path:
    for name, body in modules.items():
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(body)
    return root


def test_a_missing_dependency_in_the_child_is_raised_as_such(tmp_path, monkeypatch):
    fake = _fake_packages(tmp_path / "fake", torch="raise ImportError('no torch here', name='torch')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    with pytest.raises(MissingDependencyError) as info:
        export_in_child(tmp_path / "model", tmp_path / "out" / "model.onnx")
    assert info.value.package == "torch" and "pip install 'semcache-llm[embed]'" in str(info.value)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_failing_export_says_why_in_one_line(tmp_path, monkeypatch):
    fake = _fake_packages(tmp_path / "fake", torch="", transformers="raise RuntimeError('a broken install')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    with pytest.raises(ConfigurationError, match=r"exited 1\): RuntimeError: a broken install$"):
        export_in_child(tmp_path / "model", tmp_path / "out" / "model.onnx")
