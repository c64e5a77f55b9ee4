"""The write path: store, set_many, invalidate, flush and sweep.

Every write and delete gets a version (:mod:`semcache.versions`) and goes bottom
tier first: L3 (the commit point, with the change log), then L2, then L1, then the
index, then an event for the other replicas. Each tier keeps the highest version
per key, so concurrent writers agree on the winner and a late or replayed older
operation changes nothing. A delete leaves tombstones, so a lookup that read the
old entry before the delete cannot copy it back.

A tier that is skipped (down) is told later (:mod:`semcache.chain`): L3's misses are
handed off to L2 (durable) or held in memory (the write is then reported not
durable); a cache tier's misses are replayed as "drop older than this version".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import tracing
from .chain import Skip
from .config import UNSET
from .core import Core, validate_ttl
from .errors import BackendConflict, BackendError, BackendUnavailable, ConfigurationError
from .keys import Request
from .serde import dumps
from .types import Entry, Selector
from .validate import check_metadata, check_tags
from .versions import next_version

__all__ = ["Writer"]

log = logging.getLogger("semcache")


class Writer:
    """Writes and invalidations over a :class:`~semcache.core.Core`."""

    def __init__(self, core: Core, publish: Callable[[dict[str, Any]], None]) -> None:
        self.core = core
        self.chain = core.chain
        self.publish = publish

    # -- entries -----------------------------------------------------------------
    def make_entry(self, request: Request, value: Any, *, ttl_seconds: Any, tags: Iterable[str], metadata: Mapping[str, Any] | None, now: float) -> Entry:
        """Validate and serialise one write (nothing is stored yet)."""
        ttl = self.core.config.policy.default_ttl_seconds if ttl_seconds is UNSET else validate_ttl(ttl_seconds)
        tag_t = check_tags(tags)
        meta = check_metadata(metadata)
        payload = dumps(value)
        return Entry(
            key=request.key,
            scope=request.scope,
            prompt=request.text,
            payload=payload,
            created_at=now,
            expires_at=None if ttl is None else now + ttl,
            namespace=request.namespace,
            model=request.model,
            tags=tag_t,
            metadata=meta,
            ttl_seconds=ttl,
        )

    def with_vector(self, entry: Entry, v: np.ndarray) -> Entry:
        """The entry with its embedding attached."""
        return replace(entry, embedding=np.asarray(v, dtype=np.float32).tobytes(), embedder_id=self.core.embedder.model_id)

    @tracing.traced("semcache.store", tracing.record_store)
    def store(self, request: Request, value: Any, *, ttl_seconds: Any, tags: Iterable[str], metadata: Mapping[str, Any] | None, embedding: np.ndarray | None) -> Entry:
        """Store one response; see :meth:`SemanticCache.store`."""
        core = self.core
        now = core.timer()
        # validate (and serialise) everything before embedding or writing anything
        entry = self.make_entry(request, value, ttl_seconds=ttl_seconds, tags=tags, metadata=metadata, now=now)
        if embedding is not None:
            if core.index is None:
                raise ConfigurationError("this cache has no embedder (semantic matching is off)")
            embedding = core.check_vector(embedding)
        elif core.index is not None:
            embedding = core.embed(request)
        if embedding is not None:
            entry = self.with_vector(entry, embedding)
        return self.write([entry], now)[0]

    @tracing.traced("semcache.store", tracing.record_store_many)
    def set_many(self, items: Iterable[Mapping[str, Any]], batch_size: int) -> list[Entry]:
        """Store many responses, embedding in batches; see :meth:`SemanticCache.set_many`."""
        from .errors import InvalidInputError
        from .keys import build_request

        core = self.core
        now = core.timer()
        entries: list[Entry] = []
        for it in items:
            if not isinstance(it, Mapping) or "value" not in it:
                raise InvalidInputError("each item must be a mapping with a 'value'")
            req = build_request(
                it.get("prompt"), messages=it.get("messages"), model=it.get("model"), params=it.get("params"), namespace=it.get("namespace")
            )
            entries.append(
                self.make_entry(
                    req, it["value"], ttl_seconds=it.get("ttl_seconds", UNSET), tags=it.get("tags", ()), metadata=it.get("metadata"), now=now
                )
            )
        out: list[Entry] = []
        for i in range(0, len(entries), batch_size):
            batch = entries[i : i + batch_size]
            if core.index is not None:
                todo = [j for j, e in enumerate(batch) if core.embeddable(e.prompt)]
                if todo:
                    m = core.embed_many([batch[j].prompt for j in todo])
                    core.stats.inc("embeddings", len(todo))
                    for n, j in enumerate(todo):
                        batch[j] = self.with_vector(batch[j], m[n])
            # the same prompt twice: the last one wins, as with set()
            out.extend(self.write(list({e.key: e for e in batch}.values()), now))
        return out

    def write(self, entries: list[Entry], now: float) -> list[Entry]:
        """Write entries through every tier, bottom first; return them versioned, with
        ``durable`` set."""
        core, chain = self.core, self.chain
        entries = [replace(e, version=next_version()) for e in entries]
        durable = False
        skips: list[Skip] = []
        s3 = chain.l3_slot
        if s3 is not None:
            b3 = s3.backend
            try:
                chain.call(s3, lambda: b3.set_many(entries, now), defer=True)
                durable = True
            except Skip as skip:
                skips.append(skip)
                cause = skip.__cause__
                if isinstance(cause, BackendError) and not isinstance(cause, (BackendUnavailable, BackendConflict)):
                    # L3 answered and refused these writes for good (not an outage, not a
                    # lost race): nothing is stored anywhere, and the caller is told
                    core.stats.inc("not_durable", len(entries))
                    raise BackendError(f"L3 refused the write ({type(cause).__name__}); nothing was stored") from cause
                # down, or lost to a concurrent transaction: kept and replayed
                durable = chain.hold(entries)
        # only L3 keeps vectors (for rebuilds); L1/L2 copies would just cost memory
        lean = [replace(e, embedding=None) if e.embedding is not None else e for e in entries]
        for slot in reversed(chain.slots):
            if slot is s3:
                continue
            b = slot.backend
            try:
                if len(lean) > 1:
                    chain.call(slot, lambda: b.set_many(lean, now), defer=True)
                else:
                    chain.call(slot, lambda: b.set(lean[0], now), defer=True)
            except Skip as skip:
                skips.append(skip)
                # the tier may still hold an older value under these keys: it drops it
                # before it serves again
                chain.missed(slot, versions={e.key: e.version - 1 for e in entries})
        core.stats.inc("sets", len(entries))
        for e in entries:
            core.tenants.inc(e.namespace, "sets")
        if s3 is not None and not durable:
            core.stats.inc("not_durable", len(entries))
            log.warning("%d write(s) reached no durable tier (L3 and L2 down); kept in memory only", len(entries))
        index = core.index
        shared = bool(getattr(index, "shared", False))  # pgvector: L3 wrote the vectors
        if index is not None and not shared:
            by_scope: dict[str, list[Entry]] = {}
            for e in entries:
                if e.embedding is not None:
                    by_scope.setdefault(e.scope, []).append(e)
                elif e.key in index:
                    index.remove([e.key])  # replaced by an exact-only entry
            for scope, es in by_scope.items():
                vecs = np.frombuffer(b"".join(e.embedding for e in es if e.embedding), dtype=np.float32).reshape(len(es), -1)
                index.add(scope, [e.key for e in es], vecs)
        from .events import add_message

        message = add_message(entries)
        if shared:
            for item in message["items"]:
                item["v"] = None  # every replica searches L3's index: no vector travels
        self.publish(message)
        chain.raise_deferred(skips)
        return [replace(e, durable=durable if s3 is not None else False) for e in entries]

    # -- deletes and invalidation ----------------------------------------------------
    def delete_everywhere(self, keys: Sequence[str]) -> None:
        """Remove keys from every tier and the index (an unreadable value)."""
        self.invalidate(Selector(keys=tuple(keys)))

    def invalidate(self, selector: Selector) -> int:
        """Remove every entry ``selector`` matches, bottom tier first; return how many
        distinct entries went."""
        core, chain = self.core, self.chain
        now = core.timer()
        version = next_version()
        gone: set[str] = set()
        skips: list[Skip] = []
        s3 = chain.l3_slot
        if s3 is not None:
            b3 = s3.backend
            try:
                gone.update(chain.call(s3, lambda: b3.invalidate(selector, now, version), defer=True))
            except Skip as skip:
                skips.append(skip)
                named = selector == Selector(keys=selector.keys)
                if named:
                    chain.hold([], [(k, version) for k in selector.keys])
                else:
                    chain.hold([], selector=(selector, version))
        ho, s2 = chain.handoff, chain.l2_slot
        if ho is not None and s2 is not None and s3 is not None:
            # writes waiting for L3 are not in L3 yet, so its invalidation cannot see
            # them (another replica may have handed them off): tombstone matches there
            try:
                chain.call(s2, lambda: ho.handoff_invalidate(selector, now, version))
            except Skip:
                pass
        for slot in reversed(chain.slots):
            if slot is s3:
                continue
            b = slot.backend
            # the keys L3 removed too: a tier that does not hold them yet must still
            # refuse a copy of the old version that a lookup in flight might make
            # (a flush needs none: its floor refuses every older copy)
            extra = [] if selector.all else sorted(gone - set(selector.keys))
            try:
                gone.update(chain.call(slot, lambda: b.invalidate(selector, now, version), defer=True))
                if extra:
                    chain.call(slot, lambda: b.delete(extra, version), defer=True)
            except Skip as skip:
                skips.append(skip)
                named = bool(selector.keys) and selector == Selector(keys=selector.keys)
                chain.missed(
                    slot,
                    versions={k: version for k in (*selector.keys, *extra)},
                    selector=None if named else selector,
                    version=version,
                )
        index = core.index
        if index is not None and gone:
            index.remove(list(gone))
        if index is not None and selector.all:
            index.clear()
        core.stats.inc("invalidated", len(gone))
        if gone and not selector.all and selector.namespace is not None:
            core.tenants.inc(selector.namespace, "invalidated", len(gone))
        from .events import invalidate_message

        self.publish(invalidate_message(() if selector.all else gone, selector, version))
        chain.raise_deferred(skips)
        return len(gone)

    def sweep_every(self, interval: float, stop: threading.Event) -> None:
        """The background sweeper: :meth:`sweep` every ``interval`` seconds until ``stop``."""
        while not stop.wait(interval):
            try:
                n = self.sweep()
                if n:
                    log.info("swept %d expired entries from L3", n)
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.warning("sweep failed", exc_info=True)

    def sweep(self) -> int:
        """Delete expired rows from L3 (and their vectors from the index); return how many."""
        chain, core = self.chain, self.core
        s3, sw = chain.l3_slot, chain.sweeper
        if s3 is None or sw is None:
            return 0
        now = core.timer()
        try:
            keys = chain.call(s3, lambda: sw.sweep(now))
        except Skip:
            return 0
        if core.index is not None and keys:
            core.index.remove(keys)
        return len(keys)
