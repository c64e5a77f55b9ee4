"""Embedders: turn texts into unit-norm vectors for the semantic index.

``default_embedder()`` picks the fastest available backend for all-MiniLM-L6-v2. Importing
this package imports no optional dependency; each embedder imports its own on first use.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from ..errors import InvalidInputError, MissingDependencyError
from ._models import DEFAULT_MODEL_ID
from .base import Embedder, check_embeddings, check_texts, normalize_rows
from .callable import CallableEmbedder
from .hashing import HashingEmbedder
from .onnx import OnnxEmbedder, export_onnx, onnx_cache_root
from .sentence_transformers import SentenceTransformerEmbedder

__all__ = [
    "resolve_embedder",
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


def resolve_embedder(choice: Any) -> Any:
    """Turn a config's ``embedder`` value into an Embedder: ``"default"``, a
    sentence-transformers model name, an Embedder, or a callable ``texts -> (n, dim)``.

    Raises:
        ConfigurationError: none of those.
    """
    import numpy as np

    from ..errors import ConfigurationError

    if choice == "default":
        return default_embedder()
    if isinstance(choice, str):
        return SentenceTransformerEmbedder(choice)
    if isinstance(choice, Embedder):
        return choice
    if callable(choice):
        probe = np.asarray(choice(["semcache dimension probe"]), dtype=np.float32)
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ConfigurationError("a callable embedder must map a list of n texts to an (n, dim) array")
        name = f"callable:{getattr(choice, '__module__', '?')}.{getattr(choice, '__qualname__', type(choice).__name__)}"
        return CallableEmbedder(choice, dim=int(probe.shape[1]), model_id=name)
    raise ConfigurationError(
        "embedder must be 'default', None, a sentence-transformers model name, an Embedder or a callable"
    )
