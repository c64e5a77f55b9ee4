"""FAISS in process: one index per scope, exact inner product while a scope is small,
HNSW once it is large.

Scoping is a hard partition — a search runs only over its scope's index — so the
nearest entry of another tenant or model can never hide (or become) the answer.
Vectors are unit-norm, so inner product is cosine similarity. Flat indexes delete
in place; HNSW cannot, so deleted ids become tombstones filtered at search time
and the scope is rebuilt once ``compact_ratio`` of it is dead.

Memory (``IndexConfig.hnsw_storage``). A small scope keeps float32 vectors in a flat
index (exact). An HNSW scope, by default (``"sq8"``), walks its graph over 8-bit codes
(one byte a dimension) and re-scores the candidates the walk returns (at least
``hnsw_ef_search`` of them) on a 16-bit copy of each vector (two bytes a dimension plus a
float32 scale): the similarities returned, and their order, are those of the float32
vectors to within about 1e-6 (the float32 dot product's own rounding is of that order),
never the 8-bit approximations. The walk itself sees the 8-bit distances: among
near-duplicates closer than ~1e-3 in cosine to one another it may return one of them
first rather than the very nearest (with that one's exact similarity). ``"float32"`` keeps the float32 vectors in the graph.
Ids carry their scope in their high bits (one int per key, no tuple), and an HNSW
scope maps graph positions to ids with an array: see :meth:`FaissIndex.memory_bytes`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..config import IndexConfig
from ..errors import EmbeddingError, MissingDependencyError

__all__ = ["FaissIndex"]

#: An id is ``serial << _SHIFT | n``: the scope's serial number in the high bits (so a
#: key maps to one int, its scope read back from the id) and a counter in the low ones.
_SHIFT = 40
#: A rebuild copies what arrived meanwhile outside the lock until at most this many are
#: left, then the rest under the lock, and swaps the new index in.
_CATCH_UP = 2000
#: Candidates an 8-bit graph walk returns for the exact re-score, at least (and at
#: least ``hnsw_ef_search``, which the walk visits anyway).
_RESCORE = 32
#: Rows per chunk of an HNSW scope's id / 16-bit vector arrays.
_CHUNK = 1 << 15
#: Vectors the 8-bit quantiser's ranges are trained on, at most.
_TRAIN = 50_000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("faiss-cpu", "embed") from exc
    return faiss


class _Rows:
    """Append-only rows aligned with an HNSW index's positions: the id of each and,
    when ``exact``, the vector as int16 with a per-row float32 scale (for the
    re-score). Chunked, so growing never copies more than one chunk."""

    __slots__ = ("codes", "dim", "exact", "ids", "n", "scales")

    def __init__(self, dim: int, exact: bool) -> None:
        self.dim = dim
        self.exact = exact
        self.n = 0
        self.ids: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []
        self.scales: list[np.ndarray] = []

    def append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if self.exact:
            scale = np.abs(vecs).max(axis=1).astype(np.float32) / np.float32(32767)
            scale[scale == 0] = 1
            codes = np.rint(vecs / scale[:, None]).astype(np.int16)
        i, total = 0, len(ids)
        while i < total:
            c, r = divmod(self.n, _CHUNK)
            take = min(_CHUNK - r, total - i)
            if c == len(self.ids):
                cap = min(_CHUNK, max(1024, take))
                self.ids.append(np.empty(cap, np.int64))
                if self.exact:
                    self.codes.append(np.empty((cap, self.dim), np.int16))
                    self.scales.append(np.empty(cap, np.float32))
            if len(self.ids[c]) < r + take:  # grow the last chunk (by half, up to a chunk)
                cap = min(_CHUNK, max(r + take, len(self.ids[c]) * 3 // 2))
                self.ids[c] = np.resize(self.ids[c], cap)
                if self.exact:
                    self.codes[c] = np.resize(self.codes[c], (cap, self.dim))
                    self.scales[c] = np.resize(self.scales[c], cap)
            self.ids[c][r : r + take] = ids[i : i + take]
            if self.exact:
                self.codes[c][r : r + take] = codes[i : i + take]
                self.scales[c][r : r + take] = scale[i : i + take]
            self.n += take
            i += take

    def all_ids(self) -> np.ndarray:
        if not self.n:
            return np.empty(0, np.int64)
        return np.concatenate(self.ids)[: self.n]

    def vectors(self, start: int) -> np.ndarray:
        """The vectors of rows ``start..n`` (decoded: needs ``exact``)."""
        out = np.empty((self.n - start, self.dim), np.float32)
        for c in range(start // _CHUNK, (self.n - 1) // _CHUNK + 1 if self.n else 0):
            lo, hi = max(start, c * _CHUNK), min(self.n, (c + 1) * _CHUNK)
            r = slice(lo - c * _CHUNK, hi - c * _CHUNK)
            out[lo - start : hi - start] = self.codes[c][r] * self.scales[c][r, None]
        return out

    def get(self, pos: Sequence[int]) -> tuple[list[int], np.ndarray | None]:
        """Ids of rows ``pos`` and (with ``exact``) their decoded vectors."""
        p = np.asarray(pos, dtype=np.int64)
        chunk, row = p // _CHUNK, p % _CHUNK
        ids = np.empty(len(p), np.int64)
        vecs = np.empty((len(p), self.dim), np.float32) if self.exact else None
        for c in np.unique(chunk).tolist():
            m = chunk == c
            r = row[m]
            ids[m] = self.ids[c][r]
            if vecs is not None:
                vecs[m] = self.codes[c][r] * self.scales[c][r, None]
        return ids.tolist(), vecs

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.ids, *self.codes, *self.scales))


class _Scope:
    __slots__ = ("dead", "gone", "hnsw", "ids", "index", "rebuilding", "rows")

    def __init__(self, index: Any, hnsw: bool, rows: _Rows | None = None) -> None:
        #: flat: an IndexIDMap over IndexFlatIP; HNSW: the bare HNSW index, whose
        #: positions ``rows`` maps to ids
        self.index = index
        self.hnsw = hnsw
        self.rows = rows
        self.ids: set[int] = set()  # live int ids
        self.dead: set[int] = set()  # tombstones (HNSW only)
        self.rebuilding = False  # a replacement is being built in the background
        #: while a replacement is built: the ids removed since it started
        self.gone: set[int] | None = None


class FaissIndex:
    """A :class:`~semcache.index.base.VectorIndex` on faiss-cpu. Thread-safe."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self._faiss = _faiss()
        self._faiss.omp_set_num_threads(self.config.faiss_threads)
        self._lock = threading.RLock()
        self._scopes: dict[str, _Scope] = {}
        self._key_to: dict[str, int] = {}
        self._id_to_key: dict[int, str] = {}
        self._next = 1
        #: scope name <-> serial (the high bits of its ids); a name keeps its serial
        self._serials: dict[str, int] = {}
        self._names: list[str] = []
        self._held = 0  # inside deferred(): no HNSW switch until it ends
        #: While a replacement index is being built, the changes made to this one, so
        #: they can be replayed onto the replacement before it takes over.
        self._journal: list[tuple[str, tuple[Any, ...]]] | None = None
        self._workers: list[threading.Thread] = []

    # -- construction -------------------------------------------------------
    def _new_scope(self, hnsw: bool) -> _Scope:
        f = self._faiss
        if not hnsw:
            return _Scope(f.IndexIDMap(f.IndexFlatIP(self.dim)), False)
        if self.config.hnsw_storage == "sq8":
            inner = f.IndexHNSWSQ(self.dim, f.ScalarQuantizer.QT_8bit, self.config.hnsw_m, f.METRIC_INNER_PRODUCT)
        else:
            inner = f.IndexHNSWFlat(self.dim, self.config.hnsw_m, f.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.config.hnsw_ef_construction
        inner.hnsw.efSearch = self.config.hnsw_ef_search
        return _Scope(inner, True, _Rows(self.dim, exact=self.config.hnsw_storage == "sq8"))

    def _append(self, sc: _Scope, vecs: np.ndarray, ids: np.ndarray) -> None:
        if sc.rows is None:
            sc.index.add_with_ids(vecs, ids)
            return
        if not sc.index.is_trained:
            # the 8-bit ranges come from the first vectors (later ones are clipped to
            # them for the walk only: the re-score uses the 16-bit copy)
            step = max(1, len(vecs) // _TRAIN)
            sc.index.train(np.ascontiguousarray(vecs[::step]))
        sc.index.add(vecs)
        sc.rows.append(ids, vecs)

    def _check(self, vectors: np.ndarray, n: int) -> np.ndarray:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v.reshape(1, -1)
        if v.shape != (n, self.dim):
            raise EmbeddingError(f"expected vectors of shape ({n}, {self.dim}), got {v.shape}")
        if not np.isfinite(v).all():
            raise EmbeddingError("vectors contain NaN or infinite values")
        return v

    def _vectors_after(self, sc: _Scope, after: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The live ids of a scope above ``after`` with their vectors, and the highest id
        its index holds (``after`` when none is higher). Ids only grow within a scope's
        index, so those above ``after`` are a suffix of it: only that part is read."""
        rows = sc.rows
        ids = rows.all_ids() if rows is not None else self._faiss.vector_to_array(sc.index.id_map).astype(np.int64)
        pos = np.flatnonzero(ids > after)
        if not len(pos):
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32), after
        start, n = int(pos[0]), len(ids)
        if rows is not None and rows.exact:
            vecs = rows.vectors(start)
        elif rows is not None:
            vecs = sc.index.reconstruct_n(start, n - start)
        else:
            vecs = sc.index.index.reconstruct_n(start, n - start)
        ids = ids[start:]
        live = sc.ids
        keep = np.fromiter((i in live for i in ids.tolist()), dtype=bool, count=len(ids))
        return ids[keep], np.ascontiguousarray(vecs[keep], dtype=np.float32), int(ids.max())

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
        new = self._new_scope(hnsw)
        added: list[np.ndarray] = []
        with self._lock:
            if self._scopes.get(scope) is not sc:
                return
            ids, vecs, hi = self._vectors_after(sc, -1)
            sc.gone = set()
        while True:
            if len(ids):
                self._append(new, vecs, ids)  # the slow part, outside the lock
                added.append(ids)
            with self._lock:
                if self._scopes.get(scope) is not sc:
                    return  # the scope was emptied or cleared meanwhile
                ids, vecs, hi = self._vectors_after(sc, hi)  # what arrived meanwhile
                if len(ids) > _CATCH_UP:
                    continue  # many: add them outside the lock too
                if len(ids):
                    self._append(new, vecs, ids)
                    added.append(ids)
                gone = sc.gone or set()
                if gone:
                    g = np.fromiter(gone, dtype=np.int64, count=len(gone))
                    removed = g[np.isin(g, np.concatenate(added))] if added else g[:0]
                    if hnsw:
                        new.dead = set(removed.tolist())
                    elif len(removed):
                        new.index.remove_ids(removed)
                new.ids = sc.ids  # the old scope is dropped: its live set carries over
                sc.gone = None
                self._scopes[scope] = new
                return

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background rebuilds to finish (tests, benchmarks, shutdown)."""
        for worker in list(self._workers):
            worker.join(timeout)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Bulk loading: no scope switches to HNSW inside the block; at its end each
        scope past ``hnsw_min_entries`` starts its switch (in the background unless
        ``background_rebuild`` is off), served exactly by its flat index meanwhile."""
        with self._lock:
            self._held += 1
        try:
            yield
        except BaseException:
            with self._lock:
                self._held -= 1  # a failed load is thrown away: no build for it
            raise
        else:
            with self._lock:
                self._held -= 1
                if not self._held:
                    for name, sc in list(self._scopes.items()):
                        if not sc.hnsw and len(sc.ids) >= self.config.hnsw_min_entries:
                            self._schedule_rebuild(name, sc, hnsw=True)

    def _serial(self, scope: str) -> int:
        serial = self._serials.get(scope)
        if serial is None:
            serial = self._serials[scope] = len(self._names)
            self._names.append(scope)
        return serial

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
                sc = self._new_scope(False)
                self._scopes[scope] = sc
            ids = np.arange(self._next, self._next + len(keys), dtype=np.int64) | (self._serial(scope) << _SHIFT)
            self._next += len(keys)
            self._append(sc, v, ids)
            for k, i in zip(keys, ids.tolist()):
                sc.ids.add(i)
                self._key_to[k] = i
                self._id_to_key[i] = k
            if not sc.hnsw and not self._held and len(sc.ids) >= self.config.hnsw_min_entries:
                self._schedule_rebuild(scope, sc, hnsw=True)

    def _remove_locked(self, keys: Sequence[str]) -> int:
        by_scope: dict[str, list[int]] = {}
        names = self._names
        for k in keys:
            i = self._key_to.pop(k, None)
            if i is None:
                continue
            self._id_to_key.pop(i, None)
            by_scope.setdefault(names[i >> _SHIFT], []).append(i)
        n = 0
        for scope, ids in by_scope.items():
            sc = self._scopes[scope]
            sc.ids.difference_update(ids)
            if sc.gone is not None:
                sc.gone.update(ids)
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
            rows = sc.rows
            # the 8-bit walk visits ef_search candidates anyway: re-score them all
            wide = max(k, _RESCORE, self.config.hnsw_ef_search)
            kk = min(wide if rows is not None and rows.exact else k, total)
            while True:
                sims, ids = sc.index.search(v, kk)
                found = [i for i in ids[0].tolist() if i >= 0]
                if rows is None:
                    cands = list(zip(sims[0].tolist(), found))
                else:
                    cid, vecs = rows.get(found)
                    if vecs is None:
                        cands = list(zip(sims[0].tolist(), cid))
                    else:  # the exact re-score of the walk's candidates
                        exact = (vecs @ v[0]).tolist()
                        cands = sorted(zip(exact, cid), key=lambda c: -c[0])
                out: list[tuple[str, float]] = []
                for s, i in cands:
                    if i in sc.dead:
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
        i = self._key_to.get(key)
        return None if i is None else self._names[i >> _SHIFT]

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
                "bytes_estimate": sum(self._index_bytes(s) for s in self._scopes.values()),
            }

    def _index_bytes(self, sc: _Scope) -> int:
        """Bytes held for one scope's vectors: codes, graph, id map / rows."""
        f = self._faiss
        if sc.rows is None:
            inner = f.downcast_index(sc.index.index)
            return int(8 * sc.index.id_map.size() + inner.ntotal * inner.sa_code_size())
        h = sc.index.hnsw
        n = 4 * h.neighbors.size() + 8 * h.offsets.size() + 4 * h.levels.size()
        n += sc.index.storage.ntotal * sc.index.storage.sa_code_size()
        return int(n + sc.rows.nbytes())

    def memory_bytes(self) -> dict[str, int]:
        """What the index holds in memory, in bytes: ``vectors`` (FAISS's own array
        sizes: codes, HNSW graphs, id maps; plus the HNSW scopes' id and 16-bit rows),
        ``python`` (the key <-> id maps and live/tombstone sets: containers, key
        strings and id ints, by ``sys.getsizeof``; a key string shared with the caller
        is counted here too), ``total`` and ``entries``. Walks every key: O(n)."""
        with self._lock:
            vb = sum(self._index_bytes(s) for s in self._scopes.values())
            size = sys.getsizeof
            py = size(self._key_to) + size(self._id_to_key)
            py += sum(size(k) for k in self._key_to)
            py += sum(size(i) for i in self._id_to_key)  # one int object per id, shared
            py += sum(size(s.ids) + size(s.dead) for s in self._scopes.values())
            py += sum(size(s.gone) for s in self._scopes.values() if s.gone is not None)
            return {"vectors": vb, "python": py, "total": vb + py, "entries": len(self._key_to)}
