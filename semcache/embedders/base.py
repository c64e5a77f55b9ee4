"""The embedder protocol and helpers shared by every embedder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import EmbeddingError, InvalidInputError

__all__ = ["Embedder", "check_embeddings", "check_texts", "normalize_rows"]


@runtime_checkable
class Embedder(Protocol):
    """Turns a batch of texts into L2-normalised float32 vectors.

    ``model_id`` is a stable name for the vector space: vectors from embedders with
    different ids are never compared. ``max_tokens`` is the model window in tokens
    (``None`` when unbounded); ``count_tokens`` says how many tokens a text takes so
    the cache can decide what to do with texts longer than the window.
    """

    model_id: str

    # Read-only properties, so lazily loading embedders may compute them on first access
    # (a plain attribute also satisfies a read-only protocol member).
    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        ...

    @property
    def max_tokens(self) -> int | None:
        """Model window in tokens, or None when unbounded."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 matrix of unit-norm rows."""
        ...

    def count_tokens(self, text: str) -> int:
        """Return the number of model tokens ``text`` takes (special tokens included)."""
        ...


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Return ``matrix`` as C-contiguous float32 with unit-norm rows (zero rows stay zero)."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(m / norms, dtype=np.float32)


def check_texts(texts: object) -> list[str]:
    """Validate ``embed()`` input: a sequence of ``str`` (not a bare str); return it as a list."""
    # A bare str is itself a Sequence[str]; embedding it character by character is never meant.
    if isinstance(texts, (str, bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InvalidInputError(f"texts must be a sequence of str, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInputError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return out


def check_embeddings(matrix: object, n: int, dim: int) -> np.ndarray:
    """Validate an embedder's output: shape ``(n, dim)``, finite, non-zero; return it normalised."""
    try:
        m = np.asarray(matrix, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedder returned something that is not a matrix: {exc}") from exc
    if m.ndim == 1 and n == 1:
        m = m.reshape(1, -1)
    if m.ndim != 2 or m.shape[0] != n:
        raise EmbeddingError(f"embedder returned shape {m.shape}, expected ({n}, {dim})")
    if m.shape[1] != dim:
        raise EmbeddingError(
            f"embedder returned vectors of dimension {m.shape[1]}, expected {dim}"
        )
    if not np.isfinite(m).all():
        raise EmbeddingError("embedder returned NaN or infinite values")
    if (np.abs(m).sum(axis=1) == 0).any():
        raise EmbeddingError("embedder returned an all-zero vector")
    return normalize_rows(m)
