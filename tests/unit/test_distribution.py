"""The name that installs: the distribution is ``semcache-llm`` (``semcache`` on PyPI is an
unrelated project), the import name ``semcache``, and every install line says so."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "semcache-llm"


def test_the_distribution_name_and_its_own_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == NAME
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            assert not re.match(r"semcache\[", req), (extra, req)  # self-references use the real name


def test_the_installed_metadata_carries_the_name():
    assert metadata.distribution(NAME).metadata["Name"] == NAME
    import semcache

    assert metadata.version(NAME) == semcache.__version__


def test_every_install_line_names_the_distribution():
    texts = [ROOT / "README.md", *(ROOT / "semcache").rglob("*.py"), *(ROOT / "examples").rglob("*.py"), ROOT / "deploy" / "Dockerfile"]
    lines = [
        (p.name, line)
        for p in texts
        for line in p.read_text().splitlines()
        if re.search(r"pip install\b", line) and re.search(r"['\"\s]semcache(-llm)?(\[|['\"\s]|$)", line)
    ]
    wrong = [(name, line) for name, line in lines if "semcache-llm" not in line and "uninstall" not in line]
    assert not wrong, wrong
    assert any("semcache-llm[all]" in line for _, line in lines)


def test_a_missing_extra_names_the_distribution():
    from semcache.errors import MissingDependencyError

    assert "pip install 'semcache-llm[redis]'" in str(MissingDependencyError("redis", "redis"))
