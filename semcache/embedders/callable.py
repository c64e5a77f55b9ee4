"""Wrap any ``fn(list[str]) -> array-like`` (an API client, a custom model) as an Embedder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import check_embeddings, check_texts

__all__ = ["CallableEmbedder"]


def _word_count(text: str) -> int:
    return len(text.split())


class CallableEmbedder:
    """Embedder around a plain callable; its output is validated and L2-normalised.

    ``fn`` receives a non-empty ``list[str]`` and must return something convertible to an
    ``(n, dim)`` float matrix. NaN/inf, zero rows or a wrong shape raise
    :class:`~semcache.errors.EmbeddingError`; exceptions raised by ``fn`` propagate as they
    are. ``fn`` must be thread-safe if the embedder is shared between threads.
    ``count_tokens`` uses ``token_counter`` when given, else a whitespace word count.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], Any],
        *,
        dim: int,
        model_id: str,
        max_tokens: int | None = None,
        token_counter: Callable[[str], int] | None = None,
    ) -> None:
        """Wrap ``fn`` producing ``dim``-dimensional vectors in the space named ``model_id``."""
        if not callable(fn):
            raise InvalidInputError("fn must be callable")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise InvalidInputError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(model_id, str) or not model_id:
            raise InvalidInputError("model_id must be a non-empty str")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise InvalidInputError(
                f"max_tokens must be a positive int or None, got {max_tokens!r}"
            )
        self._fn = fn
        self.dim = dim
        self.model_id = model_id
        self.max_tokens = max_tokens
        self._token_counter = token_counter or _word_count

    def __repr__(self) -> str:
        return f"CallableEmbedder({self._fn!r}, dim={self.dim}, model_id={self.model_id!r})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``fn(texts)`` validated as an ``(len(texts), dim)`` float32 unit-row matrix."""
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return check_embeddings(self._fn(items), len(items), self.dim)

    def count_tokens(self, text: str) -> int:
        """Return the token count of ``text`` per ``token_counter`` (default: word count)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        return int(self._token_counter(text))
