"""The read path: exact key L1 → L2 → L3, then the semantic index (and the pair
verifier), then explain.

With a verifier (``Policy.verifier``), the nearest candidates past the similarity
floor, live and passing every guard (a guard's veto skips one candidate), are scored
together in one verifier call, and the first in cosine order whose score clears the
calibrated threshold is the hit. A batch (:meth:`Reader.lookup_many`) scores the
candidates of all its requests in one call, as it embeds them in one call. Without a
verifier the nearest candidate decides alone, as before.

Reads never resurrect. Before reading anything a lookup takes L1's read token
(:meth:`~semcache.tiers.memory.MemoryBackend.mark`); a hit in a lower tier is copied
into the tiers above with its remaining TTL, into L1 only if the key has not changed
there since the token, and into L2 only if L2 holds nothing newer (a version or a
tombstone). So a lookup that read an entry just before it was invalidated or
overwritten never copies the old version back up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import tracing
from .chain import Skip, TierSlot
from .config import UNSET
from .core import Core
from .errors import InvalidInputError
from .keys import Request
from .tiers.base import Touchable
from .types import Candidate, Entry, Hit, LookupOutcome

__all__ = ["Reader", "Survivor"]


class Survivor(NamedTuple):
    """A semantic candidate waiting for the verifier: live, in scope, past every guard."""

    entry: Entry
    tier: int
    similarity: float
    token: int | None
    started: float


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
    @tracing.traced("semcache.lookup", tracing.record_lookup, found_only=True)
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

    @tracing.traced("semcache.lookup", tracing.record_lookup)
    def exact(self, request: Request, now: float) -> Hit | None:
        """The exact path: L1 → L2 → L3 by key, promoting; never embeds."""
        found = self.fetch(request.key, now)
        if found is None:
            return None
        entry, slot = found
        if entry.scope != request.scope:  # a hash collision: never serve across scopes
            return None
        return self.core.hit(entry, slot.name, "exact", 1.0, now)

    @tracing.traced("semcache.lookup", tracing.record_lookup)
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
        core.miss(request)
        return None

    def vector(self, request: Request, v: np.ndarray | None) -> np.ndarray | None:
        """The request's vector: ``v`` checked like the embedder's own, else embedded
        (``None``: the prompt is not embeddable)."""
        if v is None:
            return self.core.embed(request)
        return self.core.check_vector(v)

    def semantic(self, request: Request, now: float, thr: float, v: np.ndarray | None) -> Hit | None:
        """Without a verifier: the nearest candidate in scope that clears the threshold
        and every guard. With one: the first of the nearest candidates past the floor
        (and the threshold) and the guards whose verifier score clears its threshold."""
        core = self.core
        v = self.vector(request, v)
        if v is None:
            return None
        core.stats.inc("semantic_lookups")
        if core.verifier is None:
            return self.nearest(request, now, thr, v)
        survivors = self.survivors(request, now, thr, v)
        if not survivors:
            return None  # nothing past the floor: the verifier is not asked
        # The nearest survivor first, alone: it is the hit far more often than not, and
        # scoring the others would cost their encoding. The rest only when it is rejected.
        pairs = [(request.text, c.entry.prompt) for c in survivors]
        first = core.score_pairs(pairs[:1])
        vthr = core.verifier_threshold(request.namespace)
        if first is None or len(survivors) == 1 or (vthr is not None and float(first[0]) >= vthr):
            return self.decide(request, now, survivors[:1], first)
        rest = core.score_pairs(pairs[1:])
        return self.decide(request, now, survivors, None if rest is None else np.concatenate([first, rest]))

    def live(self, request: Request, now: float, thr: float, v: np.ndarray, k: int) -> Iterator[Survivor]:
        """The nearest ``k`` candidates in cosine order, past ``thr``, not blocked, live
        in this scope (an entry gone everywhere leaves the index)."""
        core = self.core
        index = core.index
        assert index is not None
        for key, sim in index.search(request.scope, v, k):
            if sim < thr:
                tracing.refused("threshold", sim)
                break
            if core.blocked(request.key, key):
                continue
            token, started = self.token(), time.monotonic()
            found, skipped = self.find(key, now)
            if found is None:
                if not skipped:
                    index.remove([key])  # expired or deleted elsewhere
                continue
            entry, tier = found
            if entry.scope == request.scope:
                yield Survivor(entry, tier, sim, token, started)

    def vetoed(self, request: Request, entry: Entry) -> bool:
        """Whether a guard rejects the candidate (each rejection is counted)."""
        failed = [r for r in (g(request.text, entry.prompt) for g in self.core.guards) if not r.passed]
        for r in failed:
            self.core.stats.inc(f"guard_rejections_{r.name}")
        return bool(failed)

    def nearest(self, request: Request, now: float, thr: float, v: np.ndarray) -> Hit | None:
        """The semantic path without a verifier: the nearest live candidate decides."""
        for c in self.live(request, now, thr, v, self.core.config.index.top_k):
            if self.vetoed(request, c.entry):
                tracing.refused("guard", c.similarity)
                # the nearest candidate is a different question; anything further away
                # is less likely to be the same one, so this is a miss (and a rejected
                # candidate is not promoted)
                return None
            entry, slot = self.promote(c.entry, c.tier, now, c.token, c.started)
            return self.core.hit(entry, slot.name, "semantic", min(1.0, c.similarity), now)
        return None

    def survivors(self, request: Request, now: float, thr: float, v: np.ndarray) -> list[Survivor]:
        """The candidates the verifier scores: in cosine order, past ``thr`` (the floor,
        or a higher cosine threshold), live in this scope, not blocked, passing every
        guard (a guard's veto skips that candidate only); at most ``verifier_top_k``."""
        policy = self.core.config.policy
        out: list[Survivor] = []
        for c in self.live(request, now, thr, v, max(self.core.config.index.top_k, policy.verifier_top_k)):
            if self.vetoed(request, c.entry):
                continue
            out.append(c)
            if len(out) >= policy.verifier_top_k:
                break
        return out

    def decide(self, request: Request, now: float, survivors: Sequence[Survivor], scores: np.ndarray | None) -> Hit | None:
        """The first survivor (in cosine order) whose verifier score clears the
        threshold, promoted; ``None`` when none does or the verifier failed."""
        core = self.core
        if scores is None:
            tracing.refused("verifier_error", survivors[0].similarity)
            return None  # the verifier failed: never an unverified hit
        vthr = core.verifier_threshold(request.namespace)
        assert vthr is not None
        for i, (c, score) in enumerate(zip(survivors, scores)):
            if float(score) >= vthr:
                if i:
                    core.stats.inc("verifier_rejections", i)
                entry, slot = self.promote(c.entry, c.tier, now, c.token, c.started)
                return core.hit(entry, slot.name, "semantic", min(1.0, c.similarity), now, float(score))
        core.stats.inc("verifier_rejections", len(survivors))
        tracing.refused("verifier", survivors[0].similarity)
        return None

    @tracing.traced("semcache.lookup", tracing.record_lookup_many)
    def lookup_many(self, requests: Sequence[Request], thresholds: Sequence[Any] | None) -> list[LookupOutcome]:
        """A batch: exact paths first (no embedding), then one embedding call for every
        remaining embeddable text, then each semantic search, then one verifier call for
        the candidates of every request. One request's error is returned in its outcome;
        an embedder failure fails the batch."""
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
        pending: list[tuple[int, float, list[Survivor]]] = []
        for i, req in enumerate(requests):
            if out[i] is not None:
                continue
            v = vectors.get(i)
            try:
                if core.verifier is None or v is None:
                    hit = self.lookup(req, threshold=thr[i], embedding=v, exact=False, semantic=v is not None)
                    out[i] = LookupOutcome(hit, v)
                    continue
                t = core.threshold_for(req, thr[i])
                now = core.timer()
                checked = core.check_vector(v)
                core.stats.inc("semantic_lookups")
                found = self.survivors(req, now, t, checked)
                if found:
                    pending.append((i, now, found))
                else:
                    core.miss(req)
                    out[i] = LookupOutcome(None, v)
            except Exception as exc:  # noqa: BLE001 - one caller's bad request must not fail the others
                out[i] = LookupOutcome(error=exc, embedding=v)
        if pending:
            # the candidates of every request of the batch, scored in one call
            pairs = [(requests[i].text, c.entry.prompt) for i, _, found in pending for c in found]
            scores: np.ndarray | None = None
            failed: Exception | None = None
            try:
                scores = core.score_pairs(pairs)
            except Exception as exc:  # noqa: BLE001 - on_backend_error="raise": each caller gets it
                failed = exc
            pos = 0
            for i, now, found in pending:
                part = None if scores is None else scores[pos : pos + len(found)]
                pos += len(found)
                v = vectors.get(i)
                if failed is not None:
                    out[i] = LookupOutcome(error=failed, embedding=v)
                    continue
                try:
                    hit = self.decide(requests[i], now, found, part)
                    if hit is None:
                        core.miss(requests[i])
                    out[i] = LookupOutcome(hit, v)
                except Exception as exc:  # noqa: BLE001 - one caller's error must not fail the others
                    out[i] = LookupOutcome(error=exc, embedding=v)
        return [o if o is not None else LookupOutcome() for o in out]

    # -- explain (read-only) -------------------------------------------------------------
    def peek(self, key: str, now: float) -> Entry | None:
        """The live entry under ``key`` from the first tier that has it; no promotion."""
        found, _ = self.find(key, now)
        return None if found is None else found[0]

    def explain(self, req: Request, thr: float, k: int) -> dict[str, Any]:
        """The decision for a request: exact key, nearest candidates, each check and the
        verifier's score, as a lookup would decide. Read-only (nothing is promoted or counted)."""
        core = self.core
        policy = core.config.policy
        now = core.timer()
        verifier = core.verifier
        vthr = core.verifier_threshold(req.namespace)
        out: dict[str, Any] = {
            "key": req.key,
            "scope": req.scope,
            "threshold": thr,
            "verifier": None if verifier is None else verifier.verifier_id,
            "max_false_hit_rate": None if verifier is None else policy.max_false_hit_rate,
            "verifier_threshold": vthr,
            # the floor in force: Policy.similarity_floor, or higher where the verifier
            # says no lower cosine can reach its threshold
            "similarity_floor": None if verifier is None else core.threshold_for(req),
            "candidates": [],
        }
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
        # as many candidates as the lookup searches, to decide as it does; k are shown
        searched = core.config.index.top_k if verifier is None else max(core.config.index.top_k, policy.verifier_top_k)
        rows: list[dict[str, Any]] = []
        decided = False
        scored: list[int] = []  # rows the verifier scores, in cosine order
        for rank, (key, sim) in enumerate(core.index.search(req.scope, v, max(k, searched, 1))):
            row: dict[str, Any] = {"key": key, "similarity": sim, "prompt": None, "guards": (), "decision": "", "score": None}
            rows.append(row)
            entry = self.peek(key, now)
            if entry is None:
                row["decision"] = "gone (expired or deleted)"
                continue
            row["prompt"] = entry.prompt
            results = [g(req.text, entry.prompt) for g in core.guards]
            row["guards"] = tuple((r.name, r.passed, r.detail) for r in results)
            if decided or rank >= searched or len(scored) >= policy.verifier_top_k:
                row["decision"] = "not considered"
            elif sim < thr:
                below_floor = verifier is not None and sim < out["similarity_floor"]
                row["decision"] = "below floor" if below_floor else "below threshold"
                decided = True
            elif core.blocked(req.key, key):
                row["decision"] = "blocked by feedback"
            elif not all(r.passed for r in results):
                row["decision"] = "rejected by guard " + ", ".join(r.name for r in results if not r.passed)
                decided = verifier is None  # without a verifier a veto is a miss
            elif verifier is None:
                row["decision"] = "hit"
                decided = True
                out.update(decision="hit", kind="semantic", entry_id=key, similarity=sim)
            else:
                scored.append(len(rows) - 1)
        if scored:
            assert vthr is not None
            try:
                scores = core.verify_raw([(req.text, rows[i]["prompt"]) for i in scored])
            except Exception as exc:  # noqa: BLE001 - explain reports a failure, a lookup would miss
                for i in scored:
                    rows[i]["decision"] = f"verifier failed ({type(exc).__name__})"
                out["reason"] = f"the verifier failed: {type(exc).__name__}: {exc}"
            else:
                won = False  # scored together; the first in cosine order to clear wins
                for i, score in zip(scored, scores):
                    row = rows[i]
                    row["score"] = float(score)
                    if won:
                        row["decision"] = "not considered"
                    elif score >= vthr:
                        row["decision"] = "hit"
                        won = True
                        out.update(decision="hit", kind="semantic", entry_id=row["key"], similarity=row["similarity"], verifier_score=round(float(score), 6))
                    else:
                        row["decision"] = f"rejected by verifier ({float(score):.3f} < {vthr:.3f})"
        out.setdefault("decision", "miss")
        cands = [
            Candidate(r["key"], r["similarity"], r["prompt"], r["similarity"] >= thr, r["guards"], r["decision"], r["score"])
            for r in rows[: max(k, 1)]
        ]
        out["candidates"] = [
            {
                "entry_id": c.key,
                "similarity": round(c.similarity, 6),
                "prompt": c.prompt,
                "passed_threshold": c.passed_threshold,
                "guards": [{"name": n, "passed": p, "detail": d} for n, p, d in c.guards],
                "verifier_score": None if c.verifier_score is None else round(c.verifier_score, 6),
                "verifier_threshold": vthr,
                "decision": c.decision,
            }
            for c in cands
        ]
        return out
