"""Embedders: turn texts into unit-norm vectors for the semantic index.

``default_embedder()`` picks the fastest available backend for all-MiniLM-L6-v2. Importing
this package imports no optional dependency; each embedder imports its own on first use.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from ..errors import InvalidInputError, MissingDependencyError
from ._models import DEFAULT_MODEL_ID
from .base import Embedder, check_embeddings, check_texts, normalize_rows
from .callable import CallableEmbedder
from .hashing import HashingEmbedder
from .onnx import OnnxEmbedder, export_onnx, onnx_cache_root
from .sentence_transformers import SentenceTransformerEmbedder

__all__ = [
    "DEFAULT_MODEL_ID",
    "CallableEmbedder",
    "Embedder",
    "HashingEmbedder",
    "OnnxEmbedder",
    "SentenceTransformerEmbedder",
    "check_embeddings",
    "check_texts",
    "default_embedder",
    "export_onnx",
    "normalize_rows",
    "onnx_cache_root",
]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _onnx_usable(onnx_dir: str | os.PathLike[str] | None) -> bool:
    if not _installed("onnxruntime", "tokenizers"):
        return False
    if _installed("torch", "transformers", "onnx"):
        return True  # can export on first use
    # Runtime-only install: usable if an earlier export is already in the cache.
    try:
        return OnnxEmbedder(onnx_dir=onnx_dir).onnx_path.is_file()
    except Exception:  # noqa: BLE001 - model files not found locally etc.: try torch instead
        return False


def default_embedder(
    *,
    backend: Literal["auto", "onnx", "torch"] = "auto",
    num_threads: int | None = None,
    onnx_dir: str | os.PathLike[str] | None = None,
) -> Embedder:
    """Return an all-MiniLM-L6-v2 embedder: ONNX when onnxruntime is usable, else PyTorch.

    Both report ``model_id = "sentence-transformers/all-MiniLM-L6-v2"`` (their vectors are
    interchangeable). Nothing is loaded yet: the first ``embed`` (or ``.load()``) does it.
    ``num_threads`` is passed on (for torch it sets the process-wide thread count).
    """
    if backend not in ("auto", "onnx", "torch"):
        raise InvalidInputError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
    if backend == "onnx" or (backend == "auto" and _onnx_usable(onnx_dir)):
        if not _installed("onnxruntime"):
            raise MissingDependencyError("onnxruntime", "embed")
        return OnnxEmbedder(num_threads=num_threads, onnx_dir=onnx_dir)
    if _installed("sentence_transformers"):
        return SentenceTransformerEmbedder(num_threads=num_threads)
    raise MissingDependencyError(
        "sentence-transformers" if backend == "torch" else "onnxruntime or sentence-transformers",
        "embed",
    )
