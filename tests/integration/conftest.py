"""Session-wide fixtures for integration tests: the real model, loaded once."""

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
