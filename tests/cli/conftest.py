"""Fixtures for CLI tests: click's runner, and a real SQLite database with known entries."""

from __future__ import annotations

import os
import time

import pytest
from click.testing import CliRunner

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.embedders import HashingEmbedder

NOW = time.time()


@pytest.fixture(autouse=True)
def _no_semcache_env(monkeypatch):
    """The CLI reads SEMCACHE_* settings; a developer's own must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("SEMCACHE_") and not name.startswith("SEMCACHE_TEST_"):
            monkeypatch.delenv(name)
    # the toy embedder of these tests has cosine semantics; no verifier model is loaded
    monkeypatch.setenv("SEMCACHE_VERIFIER", "none")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def fill(cache: SemanticCache) -> None:
    """Five entries: two tenants, two models, tags, one old entry."""
    cache.set_many(
        [
            {
                "prompt": "What is the capital of France?",
                "value": "Paris",
                "model": "m1",
                "tags": ["geo"],
            },
            {
                "prompt": "What is the capital of Italy?",
                "value": "Rome",
                "model": "m1",
                "tags": ["geo"],
            },
            {
                "prompt": "How do I reset my password?",
                "value": {"steps": 3},
                "model": "m2",
                "tags": ["support"],
            },
            {
                "prompt": "Refund policy for orders",
                "value": "30 days",
                "model": "m2",
                "namespace": "acme",
            },
        ]
    )
    cache.timer = lambda: NOW - 10 * 86400  # written ten days ago
    cache.set(
        "An old question about billing",
        "old answer",
        model="m2",
        tags=["billing"],
        ttl_seconds=None,
    )
    cache.timer = lambda: NOW


@pytest.fixture
def sqlite_db(tmp_path) -> str:
    """A SQLite URL with the five entries of :func:`fill` (created ``NOW``)."""
    url = f"sqlite:///{tmp_path}/cli.db"
    with SemanticCache(
        CacheConfig(
            memory=MemoryConfig(),
            sql=SQLConfig(url=url),
            embedder=HashingEmbedder(64),
            policy=Policy(verifier=None),
        ),
        timer=lambda: NOW,
    ) as c:
        fill(c)
    return url
