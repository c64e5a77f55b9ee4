"""The read path: exact key L1 → L2 → L3, then the semantic index, then explain.

Reads never resurrect. Before reading anything a lookup takes L1's read token
(:meth:`~semcache.tiers.memory.MemoryBackend.mark`); a hit in a lower tier is copied
into the tiers above with its remaining TTL, into L1 only if the key has not changed
there since the token, and into L2 only if L2 holds nothing newer (a version or a
tombstone). So a lookup that read an entry just before it was invalidated or
overwritten never copies the old version back up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .chain import Skip, TierSlot
from .config import UNSET
from .core import Core
from .errors import InvalidInputError
from .keys import Request
from .tiers.base import Touchable
from .types import Candidate, Entry, Hit, LookupOutcome

__all__ = ["Reader"]


class Reader:
    """Lookups over a :class:`~semcache.core.Core`."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.chain = core.chain

    # -- finding an entry by key ---------------------------------------------------
    def token(self) -> int | None:
        """L1's read token, taken before a lookup reads anything."""
        l1 = self.chain.l1
        return None if l1 is None else l1.mark()

    def find(self, key: str, now: float) -> tuple[tuple[Entry, int] | None, bool]:
        """The live entry under ``key`` from the first tier that has it, and its tier
        index (or ``None``), without promoting; and whether a tier that was asked
        before the answer was skipped (then ``None`` is no proof the entry is gone)."""
        skipped = False
        chain = self.chain
        # the newest delete seen in an upper tier: an older copy below is not served
        deleted = 0
        for i, slot in enumerate(chain.slots):
            if not chain.readable(slot):
                skipped = True
                continue
            b: Any = slot.backend  # a Tombstones tier when slot.tombstones (checked once)
            try:
                got = chain.call(slot, (lambda: b.read(key, now)) if slot.tombstones else (lambda: b.get(key, now)), read=True)
            except Skip:
                skipped = True
                continue
            if isinstance(got, int):
                deleted = max(deleted, got)
                continue
            if got is not None and not got.expired(now) and got.key == key:
                if got.version and got.version <= deleted:
                    return None, skipped  # removed after this copy was written
                return (got, i), skipped
        return None, skipped

    def promote(self, entry: Entry, i: int, now: float, token: int | None, started: float) -> tuple[Entry, TierSlot]:
        """Copy an entry found in tier ``i`` into the tiers above (remaining TTL)."""
        chain = self.chain
        slot = chain.slots[i]
        l2_ttl = chain.handoff.tombstone_ttl_seconds if chain.handoff is not None else 600.0
        if time.monotonic() - started > l2_ttl / 2:
            return entry, slot  # a read this slow may predate a tombstone that has expired
        if self.core.config.policy.sliding_expiry and entry.ttl_seconds is not None:
            entry = entry.with_expiry(now + entry.ttl_seconds)
            for tier in chain.slots[i:]:
                b: Any = tier.backend
                try:
                    if isinstance(b, Touchable):
                        # only the expiry moves: L3 keeps its vector
                        tb, exp = b, entry.expires_at
                        chain.call(tier, lambda: tb.touch(entry.key, exp, now))
                    else:
                        chain.call(tier, lambda: b.set(entry, now))
                except Skip:
                    pass
        for upper in chain.slots[:i]:
            b = upper.backend
            try:
                if chain.call(upper, lambda: b.set(entry, now, token=token)):
                    self.core.stats.inc(f"promotions_{upper.name}")
            except Skip:
                pass
        return entry, slot

    def fetch(self, key: str, now: float) -> tuple[Entry, TierSlot] | None:
        """Find a live entry by key, top tier first, promoting it upward."""
        token, started = self.token(), time.monotonic()
        found, _ = self.find(key, now)
        return None if found is None else self.promote(found[0], found[1], now, token, started)

    # -- lookups ----------------------------------------------------------------------
    def lookup_memory(self, request: Request) -> Hit | None:
        """An exact hit from L1 alone, never blocking; ``None`` is not a miss."""
        core = self.core
        l1 = self.chain.l1
        if l1 is None or core.config.policy.sliding_expiry:
            return None  # sliding expiry writes to every tier: take the full path
        now = core.timer()
        entry = l1.get(request.key, now)
        if entry is None or entry.scope != request.scope:
            return None
        return core.hit(entry, "l1", "exact", 1.0, now)

    def exact(self, request: Request, now: float) -> Hit | None:
        """The exact path: L1 → L2 → L3 by key, promoting; never embeds."""
        found = self.fetch(request.key, now)
        if found is None:
            return None
        entry, slot = found
        if entry.scope != request.scope:  # a hash collision: never serve across scopes
            return None
        return self.core.hit(entry, slot.name, "exact", 1.0, now)

    def lookup(self, request: Request, *, threshold: Any = UNSET, semantic: bool = True, embedding: np.ndarray | None = None, exact: bool = True) -> Hit | None:
        """Exact first, then semantic; counts a miss."""
        core = self.core
        thr = core.threshold_for(request, threshold)
        now = core.timer()
        if exact:
            hit = self.exact(request, now)
            if hit is not None:
                return hit
        if semantic and core.index is not None:
            hit = self.semantic(request, now, thr, embedding)
            if hit is not None:
                return hit
        core.stats.inc("misses")
        return None

    def semantic(self, request: Request, now: float, thr: float, v: np.ndarray | None) -> Hit | None:
        """The nearest candidate in scope that clears the threshold and every guard."""
        core = self.core
        index = core.index
        assert index is not None
        if v is None:
            v = core.embed(request)
            if v is None:
                return None
        else:
            v = core.check_vector(v)  # a precomputed vector is checked too
        core.stats.inc("semantic_lookups")
        for key, sim in index.search(request.scope, v, core.config.index.top_k):
            if sim < thr:
                break
            token, started = self.token(), time.monotonic()
            found, skipped = self.find(key, now)
            if found is None:
                if not skipped:
                    index.remove([key])  # expired or deleted elsewhere
                continue
            entry, tier = found
            if entry.scope != request.scope:
                continue
            failed = [r for r in (g(request.text, entry.prompt) for g in core.guards) if not r.passed]
            if failed:
                for r in failed:
                    core.stats.inc(f"guard_rejections_{r.name}")
                # the nearest candidate is a different question; anything further away
                # is less likely to be the same one, so this is a miss (and a rejected
                # candidate is not promoted)
                return None
            entry, slot = self.promote(entry, tier, now, token, started)
            return core.hit(entry, slot.name, "semantic", min(1.0, sim), now)
        return None

    def lookup_many(self, requests: Sequence[Request], thresholds: Sequence[Any] | None) -> list[LookupOutcome]:
        """A batch: exact paths first (no embedding), then one embedding call for every
        remaining embeddable text, then each semantic lookup. One request's error is
        returned in its outcome; an embedder failure fails the batch."""
        core = self.core
        thr = list(thresholds) if thresholds is not None else [UNSET] * len(requests)
        if len(thr) != len(requests):
            raise InvalidInputError("thresholds must have one item per request")
        out: list[LookupOutcome | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            try:
                hit = self.exact(req, core.timer())
                if hit is not None:
                    out[i] = LookupOutcome(hit)
                elif core.index is not None and core.embeddable(req.text):
                    todo.append(i)
            except Exception as exc:  # noqa: BLE001 - this request's error, not the batch's
                out[i] = LookupOutcome(error=exc)
        vectors: dict[int, np.ndarray] = {}
        if todo:
            matrix = core.embed_many([requests[i].text for i in todo])
            core.stats.inc("embeddings", len(todo))
            vectors = {i: matrix[j] for j, i in enumerate(todo)}
        for i, req in enumerate(requests):
            if out[i] is not None:
                continue
            v = vectors.get(i)
            try:
                hit = self.lookup(req, threshold=thr[i], embedding=v, exact=False, semantic=v is not None)
                out[i] = LookupOutcome(hit, v)
            except Exception as exc:  # noqa: BLE001 - one caller's bad request must not fail the others
                out[i] = LookupOutcome(error=exc, embedding=v)
        return [o if o is not None else LookupOutcome() for o in out]

    # -- explain (read-only) -------------------------------------------------------------
    def peek(self, key: str, now: float) -> Entry | None:
        """The live entry under ``key`` from the first tier that has it; no promotion."""
        found, _ = self.find(key, now)
        return None if found is None else found[0]

    def explain(self, req: Request, thr: float, k: int) -> dict[str, Any]:
        """The decision for a request: exact key, nearest candidates and checks. Read-only."""
        core = self.core
        now = core.timer()
        out: dict[str, Any] = {"key": req.key, "scope": req.scope, "threshold": thr, "candidates": []}
        if self.peek(req.key, now) is not None:
            out.update(decision="hit", kind="exact", entry_id=req.key)
            return out
        if core.index is None:
            out.update(decision="miss", reason="no exact entry; semantic matching is off")
            return out
        v = core.embed(req)
        if v is None:
            out.update(decision="miss", reason="no exact entry; the prompt is too long for semantic matching")
            return out
        decided = False
        cands: list[Candidate] = []
        for key, sim in core.index.search(req.scope, v, max(k, 1)):
            entry = self.peek(key, now)
            if entry is None:
                cands.append(Candidate(key, sim, None, sim >= thr, (), "gone (expired or deleted)"))
                continue
            results = [g(req.text, entry.prompt) for g in core.guards]
            gtuple = tuple((r.name, r.passed, r.detail) for r in results)
            if decided:
                decision = "not considered"
            elif sim < thr:
                decision = "below threshold"
                decided = True
            elif all(r.passed for r in results):
                decision = "hit"
                decided = True
                out.update(decision="hit", kind="semantic", entry_id=key, similarity=sim)
            else:
                decision = "rejected by " + ", ".join(r.name for r in results if not r.passed)
                decided = True
            cands.append(Candidate(key, sim, entry.prompt, sim >= thr, gtuple, decision))
        out.setdefault("decision", "miss")
        out["candidates"] = [
            {
                "entry_id": c.key,
                "similarity": round(c.similarity, 6),
                "prompt": c.prompt,
                "passed_threshold": c.passed_threshold,
                "guards": [{"name": n, "passed": p, "detail": d} for n, p, d in c.guards],
                "decision": c.decision,
            }
            for c in cands
        ]
        return out
