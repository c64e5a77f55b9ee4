"""The shared vector index in the L3 PostgreSQL (pgvector HNSW).

The vectors are L3's own rows (:mod:`semcache.tiers.sql_vectors`): the SQL tier writes
an entry's embedding in the entry's transaction and removes it with the entry. So this
index has nothing to add, remove or rebuild — ``add``, ``remove``, ``clear`` and the
journal are no-ops — and every replica searches the same committed state: an entry is
found by all of them at commit, a new replica needs no rebuild, and no vector travels
over pub/sub (:attr:`shared` tells the rest of the cache so).

A search filters on the embedder id, the dimension and the scope inside the index scan
(iterative scan, strict order); a scope with fewer vectors than
``min(IndexConfig.hnsw_min_entries, EXACT_BELOW)`` is searched exactly instead, as the
in-process index keeps its small scopes flat (the HNSW scan of a churned table can miss a
committed row: :mod:`semcache.tiers.sql_vectors`). While L3 cannot be reached a search
finds nothing — a semantic miss, counted in :meth:`stats` — and exact lookups go on from
L1 and L2.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import IndexConfig
from ..errors import BackendError, EmbeddingError
from ..tiers.sql_vectors import EXACT_BELOW

__all__ = ["PgVectorIndex"]

log = logging.getLogger("semcache")

#: At most this many index tuples visited per iterative scan (pgvector's default).
MAX_SCAN_TUPLES = 20_000


class PgVectorIndex:
    """A :class:`~semcache.index.base.VectorIndex` over L3's ``semcache_vectors``."""

    #: The index is L3's: writes reach it through the SQL tier, for every replica.
    shared = True

    def __init__(
        self,
        store: Any,
        dim: int,
        embedder_id: str,
        config: IndexConfig | None = None,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.timer = timer
        self.dim = int(dim)
        self.embedder_id = embedder_id
        self.config = config or IndexConfig()
        self._errors = 0
        self._searches = 0
        self._logged = -1e9
        self._lock = threading.Lock()
        self._dim_ready = False
        #: Scopes with fewer vectors than this are searched exactly.
        self.exact_below = min(int(self.config.hnsw_min_entries), EXACT_BELOW)
        self._ensure_dim()

    def _ensure_dim(self) -> bool:
        """This dimension's HNSW index exists (made once L3 answers, if missing)."""
        if self._dim_ready:
            return True
        try:
            self.store.ensure_vector_dim(self.dim)
        except BackendError as exc:
            log.warning("could not check the pgvector index for %d dimensions (%s)", self.dim, exc)
            return False
        self._dim_ready = True
        return True

    # -- writes come through L3 ---------------------------------------------------
    def add(self, scope: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Nothing to do: L3 wrote these vectors with their entries."""

    def remove(self, keys: Sequence[str]) -> int:
        """Nothing to do: L3 removes a vector with its entry."""
        return 0

    def clear(self) -> None:
        """Nothing to do: a flush of L3 removes the vectors with the entries."""

    def start_journal(self) -> None:
        """Nothing to record: there is no replacement to build."""

    def take_journal(self) -> list[tuple[str, tuple[Any, ...]]]:
        return []

    def replay(self, ops: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Nothing to replay."""

    # -- reads ----------------------------------------------------------------------
    def search(self, scope: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest keys in ``scope`` (this embedder's), best first; none
        while L3 cannot be reached."""
        v = np.asarray(vector, dtype=np.float32).ravel()
        if v.size != self.dim:
            raise EmbeddingError(f"expected a vector of {self.dim} dimensions, got {v.size}")
        if not np.isfinite(v).all():
            raise EmbeddingError("the vector contains NaN or infinite values")
        self._searches += 1
        try:
            if not self._dim_ready and not self._ensure_dim():
                raise BackendError("L3 is unavailable")
            return list(
                self.store.vector_search(
                    scope,
                    self.embedder_id,
                    v,
                    max(1, int(k)),
                    ef_search=self.config.hnsw_ef_search,
                    max_scan_tuples=MAX_SCAN_TUPLES,
                    exact_below=self.exact_below,
                )
            )
        except BackendError as exc:
            with self._lock:
                self._errors += 1
                now = time.monotonic()
                quiet = now - self._logged < 10.0
                if not quiet:
                    self._logged = now
            if not quiet:
                log.warning("pgvector search failed (%s): semantic lookups miss until L3 answers", exc)
            return []

    def __len__(self) -> int:
        try:
            return int(self.store.vector_count(self.embedder_id, self.dim))
        except BackendError:
            return 0

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            return bool(self.store.vector_has(key, self.embedder_id))
        except BackendError:
            return False

    def keys(self) -> set[str]:
        """The keys of this embedder's vectors whose entries are live."""
        return set(self.store.vector_keys(self.embedder_id, live_at=self.timer()))

    def stats(self) -> dict[str, Any]:
        from ..db.vectors import HNSW_EF_CONSTRUCTION, HNSW_M

        try:
            size: int | None = len(self)
        except Exception:  # noqa: BLE001 - stats never fail
            size = None
        return {
            "backend": "pgvector",
            "shared": True,
            "dim": self.dim,
            "embedder_id": self.embedder_id,
            "entries": size,
            "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": self.config.hnsw_ef_search},
            "iterative_scan": "strict_order",
            "exact_below": self.exact_below,
            "searches": self._searches,
            "search_errors": self._errors,
        }
