"""The vector index protocol: per-scope nearest-neighbour search with deletes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["VectorIndex"]


@runtime_checkable
class VectorIndex(Protocol):
    """Vectors grouped by scope; a search only ever sees its own scope's vectors."""

    dim: int

    def add(self, scope: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add (or replace) vectors under ``keys`` in ``scope``."""
        ...

    def remove(self, keys: Sequence[str]) -> int:
        """Remove vectors by key from whatever scope holds them; return how many."""
        ...

    def search(self, scope: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest keys in ``scope`` with their inner products, best first."""
        ...

    def clear(self) -> None:
        """Remove everything."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def stats(self) -> dict[str, Any]:
        """Sizes and index kinds."""
        ...

    def keys(self) -> set[str]:
        """Every key held."""
        ...

    def start_journal(self) -> None:
        """Record adds and removes from now on (while a replacement is being built)."""
        ...

    def take_journal(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Stop recording; return what was recorded."""
        ...

    def replay(self, ops: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Apply recorded adds and removes."""
        ...
