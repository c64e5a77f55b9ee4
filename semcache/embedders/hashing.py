"""A deterministic, dependency-free toy embedder for tests of the cache's plumbing."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError
from .base import check_texts, normalize_rows

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
# Words carry more meaning than character trigrams; trigrams make near-spellings similar.
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    # blake2b, not hash(): Python's str hash is salted per process, vectors must not be.
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashingEmbedder:
    """Feature-hashing embedder: words and character trigrams hashed into signed buckets.

    Identical texts get identical vectors and texts sharing words or spellings get similar
    ones; there is no semantics (a paraphrase with other words is not similar). Meant for
    unit tests and demos, never for production caching.
    """

    max_tokens: int | None = None

    def __init__(self, dim: int = 64) -> None:
        """Create an embedder producing ``dim``-dimensional vectors."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise InvalidInputError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.model_id = f"hashing-{dim}"

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        norm = _SPACES.sub(" ", text.lower()).strip()
        for word in _WORD.findall(norm):
            i, s = _bucket("w:" + word, self.dim)
            vec[i] += s * _WORD_WEIGHT
        padded = f" {norm} "
        for k in range(len(padded) - 2):
            i, s = _bucket("c:" + padded[k : k + 3], self.dim)
            vec[i] += s * _TRIGRAM_WEIGHT
        if not vec.any():
            # Empty text (or buckets cancelling out): a fixed vector keeps rows unit-norm.
            i, s = _bucket("empty:" + norm, self.dim)
            vec[i] = s
        return vec

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 matrix of unit-norm rows."""
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize_rows(np.stack([self._vector(t) for t in items]))

    def count_tokens(self, text: str) -> int:
        """Return the number of whitespace-separated words in ``text``."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        return len(text.split())
