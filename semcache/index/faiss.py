"""FAISS in process: one index per scope, exact inner product while a scope is small,
HNSW once it is large.

Scoping is a hard partition — a search runs only over its scope's index — so the
nearest entry of another tenant or model can never hide (or become) the answer.
Vectors are unit-norm, so inner product is cosine similarity. Flat indexes delete
in place; HNSW cannot, so deleted ids become tombstones filtered at search time
and the scope is rebuilt once ``compact_ratio`` of it is dead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import IndexConfig
from ..errors import EmbeddingError, MissingDependencyError

__all__ = ["FaissIndex"]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("faiss-cpu", "embed") from exc
    return faiss


class _Scope:
    __slots__ = ("dead", "hnsw", "ids", "index", "rebuilding")

    def __init__(self, index: Any, hnsw: bool) -> None:
        self.index = index
        self.hnsw = hnsw
        self.ids: set[int] = set()  # live int ids
        self.dead: set[int] = set()  # tombstones (HNSW only)
        self.rebuilding = False  # a replacement is being built in the background


class FaissIndex:
    """A :class:`~semcache.index.base.VectorIndex` on faiss-cpu. Thread-safe."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self._faiss = _faiss()
        self._faiss.omp_set_num_threads(self.config.faiss_threads)
        self._lock = threading.RLock()
        self._scopes: dict[str, _Scope] = {}
        self._key_to: dict[str, tuple[str, int]] = {}
        self._id_to_key: dict[int, str] = {}
        self._next = 1
        #: While a replacement index is being built, the changes made to this one, so
        #: they can be replayed onto the replacement before it takes over.
        self._journal: list[tuple[str, tuple[Any, ...]]] | None = None
        self._workers: list[threading.Thread] = []

    # -- construction -------------------------------------------------------
    def _new_index(self, hnsw: bool) -> Any:
        f = self._faiss
        if hnsw:
            inner = f.IndexHNSWFlat(self.dim, self.config.hnsw_m, f.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.config.hnsw_ef_construction
            inner.hnsw.efSearch = self.config.hnsw_ef_search
        else:
            inner = f.IndexFlatIP(self.dim)
        return f.IndexIDMap2(inner)

    def _check(self, vectors: np.ndarray, n: int) -> np.ndarray:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v.reshape(1, -1)
        if v.shape != (n, self.dim):
            raise EmbeddingError(f"expected vectors of shape ({n}, {self.dim}), got {v.shape}")
        if not np.isfinite(v).all():
            raise EmbeddingError("vectors contain NaN or infinite values")
        return v

    def _live_vectors(self, sc: _Scope, exclude: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The live ids of a scope and their vectors (all read at once), minus ``exclude``."""
        n = sc.index.ntotal
        ids = self._faiss.vector_to_array(sc.index.id_map).astype(np.int64)
        vecs = sc.index.index.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
        want = sc.ids if exclude is None else sc.ids - exclude
        keep = np.isin(ids, np.fromiter(want, dtype=np.int64, count=len(want)))
        return ids[keep], np.ascontiguousarray(vecs[keep], dtype=np.float32)

    def _schedule_rebuild(self, scope: str, sc: _Scope, hnsw: bool) -> None:
        """Replace a scope's index (flat -> HNSW, or a compaction) without blocking searches.

        Called with the lock held. The new index is built from a snapshot in a
        background thread while the old one keeps serving; changes made meanwhile are
        applied when it is swapped in.
        """
        if sc.rebuilding:
            return
        sc.rebuilding = True
        if not self.config.background_rebuild:
            self._rebuild(scope, sc, hnsw)
            return
        worker = threading.Thread(target=self._rebuild, args=(scope, sc, hnsw), name="semcache-index", daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()

    def _rebuild(self, scope: str, sc: _Scope, hnsw: bool) -> None:
        # OpenMP's thread count is per thread: a background build must be told too
        self._faiss.omp_set_num_threads(self.config.faiss_threads)
        with self._lock:
            if self._scopes.get(scope) is not sc:
                return
            ids, vecs = self._live_vectors(sc)
        new = _Scope(self._new_index(hnsw), hnsw)
        if len(ids):
            new.index.add_with_ids(vecs, ids)  # the slow part, outside the lock
        with self._lock:
            if self._scopes.get(scope) is not sc:
                return  # the scope was emptied or cleared meanwhile
            built = set(ids.tolist())
            late_ids, late_vecs = self._live_vectors(sc, exclude=built)
            if len(late_ids):
                new.index.add_with_ids(late_vecs, late_ids)
            removed = built - sc.ids
            if removed and hnsw:
                new.dead = removed
            elif removed:
                new.index.remove_ids(np.fromiter(removed, dtype=np.int64, count=len(removed)))
            new.ids = set(sc.ids)
            self._scopes[scope] = new

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background rebuilds to finish (tests, benchmarks, shutdown)."""
        for worker in list(self._workers):
            worker.join(timeout)

    # -- protocol -----------------------------------------------------------
    def start_journal(self) -> None:
        """Start recording changes (see :meth:`take_journal`)."""
        with self._lock:
            self._journal = []

    def take_journal(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Stop recording and return the changes made since :meth:`start_journal`."""
        with self._lock:
            ops, self._journal = self._journal or [], None
            return ops

    def replay(self, ops: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Apply changes recorded on another index."""
        for name, args in ops:
            getattr(self, name)(*args)

    def add(self, scope: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace vectors under ``keys`` in ``scope``."""
        v = self._check(vectors, len(keys))
        if self._journal is not None:
            self._journal.append(("add", (scope, list(keys), v.copy())))
        if not len(keys):
            return
        if len(set(keys)) != len(keys):
            # the same key twice in one call: the last vector wins
            last = {k: i for i, k in enumerate(keys)}
            keys = list(last)
            v = v[list(last.values())]
        with self._lock:
            # replacing a key: drop its old vector first (it may live in another scope)
            self._remove_locked([k for k in keys if k in self._key_to])
            sc = self._scopes.get(scope)
            if sc is None:
                sc = _Scope(self._new_index(False), False)
                self._scopes[scope] = sc
            ids = np.arange(self._next, self._next + len(keys), dtype=np.int64)
            self._next += len(keys)
            sc.index.add_with_ids(v, ids)
            for k, i in zip(keys, ids.tolist()):
                sc.ids.add(i)
                self._key_to[k] = (scope, i)
                self._id_to_key[i] = k
            if not sc.hnsw and len(sc.ids) >= self.config.hnsw_min_entries:
                self._schedule_rebuild(scope, sc, hnsw=True)

    def _remove_locked(self, keys: Sequence[str]) -> int:
        by_scope: dict[str, list[int]] = {}
        for k in keys:
            loc = self._key_to.pop(k, None)
            if loc is None:
                continue
            self._id_to_key.pop(loc[1], None)
            by_scope.setdefault(loc[0], []).append(loc[1])
        n = 0
        for scope, ids in by_scope.items():
            sc = self._scopes[scope]
            sc.ids.difference_update(ids)
            n += len(ids)
            if sc.hnsw:
                sc.dead.update(ids)
                total = len(sc.ids) + len(sc.dead)
                if len(sc.dead) > self.config.compact_ratio * total:
                    self._schedule_rebuild(scope, sc, hnsw=len(sc.ids) >= self.config.hnsw_min_entries // 2)
            else:
                sc.index.remove_ids(np.asarray(ids, dtype=np.int64))
            if not self._scopes[scope].ids:
                del self._scopes[scope]
        return n

    def remove(self, keys: Sequence[str]) -> int:
        """Remove vectors by key; unknown keys are ignored."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("remove", (list(keys),)))
            return self._remove_locked(keys)

    def search(self, scope: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Nearest keys in ``scope`` only, best first, with cosine similarity."""
        v = self._check(vector, 1)
        with self._lock:
            sc = self._scopes.get(scope)
            if sc is None or not sc.ids:
                return []
            total = len(sc.ids) + len(sc.dead)
            kk = min(k, total)
            while True:
                sims, ids = sc.index.search(v, kk)
                out: list[tuple[str, float]] = []
                for s, i in zip(sims[0].tolist(), ids[0].tolist()):
                    if i < 0 or i in sc.dead:
                        continue
                    key = self._id_to_key.get(i)
                    if key is not None:
                        out.append((key, float(s)))
                        if len(out) == k:
                            return out
                if kk >= total or not sc.dead:
                    return out
                # tombstones crowded out live neighbours: search wider
                kk = min(total, kk * 4 + len(sc.dead) // 8)

    def scope_of(self, key: str) -> str | None:
        """The scope a key is indexed under, if any."""
        loc = self._key_to.get(key)
        return None if loc is None else loc[0]

    def clear(self) -> None:
        """Remove everything."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(("clear", ()))
            self._scopes.clear()
            self._key_to.clear()
            self._id_to_key.clear()

    def keys(self) -> set[str]:
        """Every indexed key."""
        with self._lock:
            return set(self._key_to)

    def __len__(self) -> int:
        return len(self._key_to)

    def __contains__(self, key: object) -> bool:
        return key in self._key_to

    def stats(self) -> dict[str, Any]:
        """Entries, scopes and how many scopes use HNSW."""
        with self._lock:
            return {
                "entries": len(self._key_to),
                "scopes": len(self._scopes),
                "hnsw_scopes": sum(1 for s in self._scopes.values() if s.hnsw),
                "tombstones": sum(len(s.dead) for s in self._scopes.values()),
                "bytes_estimate": len(self._key_to) * self.dim * 4,
            }
