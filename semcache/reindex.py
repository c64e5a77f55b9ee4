"""Index maintenance: rebuild the in-process index from L3, re-embed, check."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import numpy as np

from .core import Core
from .errors import BackendError
from .index.base import VectorIndex
from .tiers.base import EmbeddingStore

__all__ = ["Reindexer"]

log = logging.getLogger("semcache")


class Reindexer:
    """Rebuilds and checks the index of a :class:`~semcache.core.Core`."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._lock = threading.Lock()

    def on_tier_recovered(self, slot: Any) -> None:
        """L3 is back and the index was never built from it: build it in the background."""
        core = self.core
        if slot is core.chain.l3_slot and core.index is not None and not core.index_built and not _shared(core.index):
            threading.Thread(target=self.rebuild_safe, name="semcache-rebuild", daemon=True).start()

    def rebuild_safe(self) -> None:
        """Rebuild, logging (not raising) when L3 cannot be read."""
        try:
            self.rebuild()
        except BackendError as exc:
            log.warning("could not rebuild the index from L3 (%s); it fills as entries are stored", exc)

    def rebuild(self, *, reembed: bool = False, progress: bool | None = None) -> int:
        """Rebuild the index from L3; return how many vectors it holds."""
        core = self.core
        if core.index is None:
            return 0
        store = core.chain.store
        if store is None:
            return len(core.index)
        if _shared(core.index):
            # pgvector: the index is L3's own rows; nothing to rebuild, only to re-embed
            if reembed:
                with self._lock:
                    bar = _progress(None, "re-embedding", _want_progress(progress))
                    try:
                        self._reembed(store, core.timer(), bar, core.index)
                    finally:
                        bar.close()
            return len(core.index)
        with self._lock:
            return self._rebuild(store, reembed=reembed, progress=progress)

    def _rebuild(self, store: EmbeddingStore, *, reembed: bool, progress: bool | None) -> int:
        # fill a new index and swap it in at the end: lookups keep the old one meanwhile,
        # and a failure (L3 down) leaves it as it was
        from .index.faiss import FaissIndex

        core = self.core
        old = core.index
        assert old is not None
        fresh = FaissIndex(old.dim, core.config.index)
        old.start_journal()
        now = core.timer()
        mid = core.embedder.model_id
        show = _want_progress(core.config.index.progress if progress is None else progress)
        total = store.count(now, embedder_id=mid) if show else None
        bar = _progress(total, "rebuilding index", show)
        try:
            # a bulk load: each large scope's HNSW graph starts building once, after the
            # read (in the background: the flat index serves meanwhile), not at every page
            with fresh.deferred():
                for batch in store.iter_embeddings(mid, now):
                    by_scope: dict[str, tuple[list[str], list[bytes]]] = {}
                    for key, scope, emb in batch:
                        if len(emb) != fresh.dim * 4:
                            continue  # another dimension: never compared
                        ks, vs = by_scope.setdefault(scope, ([], []))
                        ks.append(key)
                        vs.append(emb)
                    for scope, (ks, vs) in by_scope.items():
                        mat = np.frombuffer(b"".join(vs), dtype=np.float32).reshape(len(ks), -1)
                        if not np.isfinite(mat).all():
                            good = np.asarray(np.isfinite(mat).all(axis=1), dtype=bool)
                            ks = [k for k, g in zip(ks, good.tolist()) if g]  # skip corrupt vectors
                            mat = mat[good]
                        fresh.add(scope, ks, mat)
                    bar.update(len(batch))
                if reembed:
                    self._reembed(store, now, bar, fresh)
        except BaseException:
            old.take_journal()
            raise
        finally:
            bar.close()
        # writes and invalidations that reached the old index meanwhile
        fresh.replay(old.take_journal())
        core.index = fresh
        core.index_built = True
        return len(fresh)

    def _reembed(self, store: EmbeddingStore, now: float, bar: Any, index: VectorIndex) -> None:
        core = self.core
        offset = 0
        while True:
            entries = store.list_entries(None, now, limit=500, offset=offset)
            if not entries:
                return
            offset += len(entries)
            todo = [e for e in entries if e.key not in index and core.embeddable(e.prompt)]
            if not todo:
                continue
            m = core.embed_many([e.prompt for e in todo])
            for e, v in zip(todo, m):
                store.set_embedding(e.key, v.tobytes(), core.embedder.model_id)
                index.add(e.scope, [e.key], v.reshape(1, -1))
            bar.update(len(todo))

    def check(self) -> dict[str, Any]:
        """Compare the index with L3: counts, and keys missing on either side."""
        core = self.core
        if core.index is None:
            return {"semantic": False}
        store = core.chain.store
        if store is None:
            return {"semantic": True, "index": len(core.index), "l3": None}
        now = core.timer()
        l3_keys: set[str] = set()
        for batch in store.iter_embeddings(core.embedder.model_id, now):
            l3_keys.update(k for k, _, _ in batch)
        idx = core.index.keys()
        live = store.count(now)
        out: dict[str, Any] = {
            "semantic": True,
            "embedder": core.embedder.model_id,
            "l3_embedded": len(l3_keys),
            "index": len(idx),
            "missing_from_index": len(l3_keys - idx),
            "orphans_in_index": len(idx - l3_keys),
            "l3_total_live": live,
            "consistent": l3_keys == idx,
        }
        if live > len(l3_keys):
            # live entries this embedder cannot search: say whose vectors they carry (a
            # sample of the newest names the models; each model's count is exact)
            others: set[str] = set()
            for offset in range(0, min(live, 20_000), 1000):
                page = store.list_entries(None, now, limit=1000, offset=offset)
                others.update(e.embedder_id for e in page if e.embedder_id and e.embedder_id != core.embedder.model_id)
                if len(page) < 1000:
                    break
            by_model = {m: n for m in sorted(others) if (n := store.count(now, embedder_id=m))}
            out["l3_other_embedders"] = by_model
            out["l3_without_vector"] = max(0, live - len(l3_keys) - sum(by_model.values()))
            out["unsearchable"] = live - len(l3_keys)
            out["fix"] = "semcache index rebuild --reembed"
        return out


def _shared(index: Any) -> bool:
    """Whether the index is L3's (pgvector): shared by every replica, never rebuilt."""
    return bool(getattr(index, "shared", False))


def _want_progress(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, desc: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="vec")
