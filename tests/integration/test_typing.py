"""The package type-checks under mypy --strict (the settings in pyproject.toml).

An integration test, not a unit one: it runs mypy over the whole package (about a
minute), so the unit suite stays quick. Run it with `pytest tests/integration/test_typing.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_package_passes_mypy_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "semcache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
