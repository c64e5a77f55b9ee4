"""Shared fixtures for integration tests: the real model, loaded once; a stand-in
OpenAI upstream and an in-process sidecar proxying to it (a test module may define its
own ``upstream`` or ``sidecar``, which then takes precedence)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm():
    """The default all-MiniLM-L6-v2 embedder (ONNX when available), warmed up once per session."""
    from semcache.embedders import default_embedder

    emb = default_embedder()
    emb.embed(["warm-up"])
    return emb


@pytest.fixture(scope="module")
def upstream():
    """A stand-in OpenAI-compatible upstream with no delays, one per test module."""
    from tests.upstream import StandInUpstream

    with StandInUpstream(delay_seconds=0.0, chunk_delay_seconds=0.0) as up:
        yield up


@pytest.fixture
async def sidecar(tmp_path, upstream):
    """An in-process sidecar (hashing embedder, two tenants) proxying to ``upstream``."""
    from semcache.server.app import create_app
    from tests._sidecar import in_process, server_config

    upstream.reset()
    cfg = server_config(tmp_path, upstream_url=upstream.base_url, upstream_api_key="sk-upstream")
    async with in_process(create_app(cfg)) as client:
        yield client
