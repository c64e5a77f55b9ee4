"""Feedback on hits: wrong semantic hits are blocked everywhere, and every report is
kept as a labelled pair.

:meth:`SemanticCache.feedback <semcache.SemanticCache.feedback>` takes a report on a
hit — the :class:`~semcache.types.Hit` a lookup returned (with the request's prompt),
or an entry id with the request — and:

- **wrong, on a semantic hit**: the request (its exact key: the normalised prompt in
  its scope) is never answered by that entry again, in any replica. The pairing is
  stored durably (L3; Redis when it is the lowest tier; this process's memory with
  L1 only) and reaches the other replicas the way writes do: a pub/sub event at once,
  and the change log (L3's, or with no L3 the Redis stream) within
  ``Policy.log_poll_seconds`` for a replica that missed the event. Every replica keeps
  the blocked pairings in memory (loaded at open, the most recently reported
  :data:`MAX_BLOCKED_PAIRS`), so a lookup never asks a tier whether a candidate is
  blocked. The block is on the pair of prompts, not on the answer: it stays when the
  entry is overwritten or removed and stored again.
- **wrong, on an exact hit**: the stored answer itself is wrong. The label is kept and
  the entry is invalidated through the cache's own invalidation (every tier, the
  index, every replica: the consistency contract of the README).
- **correct**: only the label is kept.

Every report is a :class:`~semcache.feedback_store.Label`: both prompts, the scope
and namespace, the entry id, the cosine similarity, the verifier's score when the
hit has one, the source (``user`` or ``llm``) and the time. :func:`load_labels`
reads them back. ``stats()["feedback"]`` counts the reports this cache received
since it opened, with an estimate of the false-hit rate *among the semantic hits
that received feedback* (see :func:`semcache.stats.feedback_report`).

What a tier outage costs is stated on :meth:`Feedback.report`.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from cachetools import LRUCache

from .chain import Skip, TierSlot
from .errors import BackendConflict, BackendError, BackendUnavailable, InvalidInputError, UnknownEntryError
from .feedback_store import Label, LabelHandoff, LabelStore, MemoryLabels, pair_id
from .keys import build_request, exact_key, normalize_prompt
from .types import Entry, Hit
from .validate import check_text, text_problem

if TYPE_CHECKING:
    from .core import Core

__all__ = ["MAX_BLOCKED_PAIRS", "SOURCES", "Feedback", "FeedbackResult", "block_message", "load_labels"]

log = logging.getLogger("semcache")

#: Blocked pairings each replica keeps in memory; past it the least recently matched
#: are dropped from memory (they stay stored, and a replica opened later loads the
#: most recently reported ones).
MAX_BLOCKED_PAIRS = 200_000
#: Labels held in this process while no tier could take them (retried every poll).
MAX_HELD_LABELS = 10_000
#: Who may judge a hit.
SOURCES = ("user", "llm")
_MAX_ENTRY_ID = 256


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What a report did."""

    label_id: str
    #: ``wrong`` or ``correct``.
    verdict: str
    #: How the reported hit was made: ``exact`` or ``semantic``.
    kind: str
    entry_id: str
    #: The exact key of the request that was answered.
    request_key: str
    similarity: float | None
    verifier_score: float | None
    #: The pairing is blocked from now on (a wrong semantic hit).
    blocked: bool
    #: Entries invalidated (a wrong exact hit: its entry).
    invalidated: int
    #: Where the label went: ``l3``, ``l2`` (the lowest tier), ``handoff`` (L2, for L3),
    #: ``memory`` (L1 only) or ``process`` (no tier took it: held here and retried).
    stored_in: str
    #: Whether a durable tier took the label: L3, or L2's hand-off for it.
    durable: bool

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (the sidecar's answer)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def block_message(pair_ids: Sequence[str]) -> dict[str, Any]:
    """The pub/sub event for blocked pairings (see :mod:`semcache.events`)."""
    return {"op": "block", "pairs": list(pair_ids)}


class _Blocks(LRUCache):  # type: ignore[type-arg]
    """Blocked pair ids, bounded; counts what it had to drop."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize)
        self.evicted = 0

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self.evicted += 1
        if self.evicted == 1:
            log.warning("more than %d blocked pairings: the least recently matched are dropped from memory", self.maxsize)
        return item


class Feedback:
    """Reports on hits and the blocked pairings of one cache (held by the facade)."""

    def __init__(self, core: Core, *, max_blocked: int = MAX_BLOCKED_PAIRS) -> None:
        self.core = core
        self._blocks = _Blocks(max_blocked)
        self._lock = threading.Lock()
        self._memory = MemoryLabels()
        #: Labels no tier took (both L3 and L2 down, or the lowest tier down), by id.
        self._held: dict[str, Label] = {}
        self._loaded = False
        self._reload = False
        #: Set by the facade at open: the pub/sub publisher, an entry's fetch, invalidation.
        self.publish: Callable[[dict[str, Any]], None] = lambda message: None
        self.fetch: Callable[[str], Entry | None] = lambda key: None
        self.invalidate: Callable[[list[str]], int] = lambda keys: 0

    # -- the read path's check --------------------------------------------------------
    def blocked(self, request_key: str, entry_key: str) -> bool:
        """Whether the entry ``entry_key`` must not answer the request ``request_key``
        (in memory only: a lookup never asks a tier)."""
        blocks = self._blocks
        if not len(blocks):
            return False
        pid = pair_id(request_key, entry_key)
        if pid not in blocks:
            return False
        with self._lock:
            blocks.get(pid)  # recently matched: kept longest
        self.core.stats.inc("feedback_blocked_candidates")
        return True

    def apply_blocks(self, pair_ids: Sequence[str]) -> None:
        """Block pairings reported here or by another replica (an event or the change log)."""
        with self._lock:
            for pid in pair_ids:
                if isinstance(pid, str) and len(pid) == 32:
                    self._blocks[pid] = True

    @property
    def blocked_pairs(self) -> int:
        """How many blocked pairings this replica holds in memory."""
        return len(self._blocks)

    # -- where labels are kept -------------------------------------------------------
    def _store_slot(self) -> TierSlot | None:
        """The tier that keeps labels: L3, else the lowest tier when it can (Redis)."""
        chain = self.core.chain
        if chain.l3_slot is not None:
            return chain.l3_slot if isinstance(chain.l3_slot.backend, LabelStore) else None
        lowest = chain.slots[-1] if chain.slots else None
        return lowest if lowest is not None and isinstance(lowest.backend, LabelStore) else None

    def _handoff(self) -> tuple[TierSlot, LabelHandoff] | None:
        chain = self.core.chain
        s2 = chain.l2_slot
        if chain.l3_slot is None or s2 is None or not isinstance(s2.backend, LabelHandoff):
            return None
        return s2, s2.backend

    def _persist(self, labels: list[Label], skips: list[Skip], *, retry: bool = False) -> tuple[str, bool]:
        """Store labels in the tier that keeps them, else L2's hand-off (for L3), else
        hold them here; return where they went and whether that is durable."""
        chain = self.core.chain
        slot = self._store_slot()
        if slot is None:
            self._memory.labels_add(labels)
            return "memory", False
        store: Any = slot.backend
        try:
            chain.call(slot, lambda: store.labels_add(labels), defer=True)
            return slot.name, slot is chain.l3_slot
        except Skip as skip:
            cause = skip.__cause__
            if isinstance(cause, BackendError) and not isinstance(cause, (BackendUnavailable, BackendConflict)):
                raise BackendError(f"{slot.name} refused the feedback label ({type(cause).__name__}); nothing was recorded") from cause
            skips.append(skip)
        ho = self._handoff() if slot is chain.l3_slot else None
        if ho is not None:
            s2, b2 = ho
            try:
                chain.call(s2, lambda: b2.labels_handoff_put(labels), defer=True)
                self.core.stats.inc("feedback_labels_handed_off", len(labels))
                return "handoff", True
            except Skip as skip:
                skips.append(skip)
        self._hold(labels, count=not retry)
        return "process", False

    def _hold(self, labels: list[Label], *, count: bool) -> None:
        with self._lock:
            for lb in labels:
                if len(self._held) >= MAX_HELD_LABELS:
                    self.core.stats.inc("feedback_labels_dropped")
                    log.error("more than %d feedback labels wait for a tier; dropping one", MAX_HELD_LABELS)
                    continue
                self._held[lb.id] = lb
        if count:
            self.core.stats.inc("feedback_labels_held", len(labels))

    # -- the poll -----------------------------------------------------------------------
    def lost_track(self) -> None:
        """The change log lost rows this replica never read: reload the blocked pairings."""
        self._reload = True

    def load(self) -> bool:
        """Load the blocked pairings from the tier that keeps them; return whether it
        answered (if not, the next poll tries again)."""
        slot = self._store_slot()
        if slot is None:
            self._loaded = True
            return True
        store: Any = slot.backend
        limit = self._blocks.maxsize
        try:
            pids = self.core.chain.call(slot, lambda: store.labels_blocking(limit), defer=True)
        except Skip:
            return False
        self.apply_blocks(list(reversed(pids)))  # the most recently reported are kept longest
        self._loaded, self._reload = True, False
        return True

    def tick(self) -> None:
        """One poll: store the labels held here, drain L2's hand-off of labels into L3,
        and (re)load the blocked pairings if a load is due."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        if held:
            try:
                where, _ = self._persist(held, [], retry=True)  # held here again if it must
            except BackendError:
                log.error("a tier refused %d held feedback labels; dropping them", len(held))
                self.core.stats.inc("feedback_labels_dropped", len(held))
            else:
                if where != "process":
                    self._publish([lb for lb in held if lb.blocks])
        self._drain()
        if not self._loaded or self._reload:
            self.load()

    def _drain(self) -> None:
        chain = self.core.chain
        ho, s3 = self._handoff(), chain.l3_slot
        if ho is None or s3 is None or not isinstance(s3.backend, LabelStore):
            return
        s2, b2 = ho
        store: Any = s3.backend
        try:
            items = chain.call(s2, b2.labels_handoff_items)
            if not items:
                return
            labels = [lb for _, lb in items]
            chain.call(s3, lambda: store.labels_add(labels))  # by id: a second drain stores nothing
            for lb in labels:
                chain.call(s2, lambda: b2.labels_handoff_done(lb.id))
            self.core.stats.inc("feedback_labels_drained", len(labels))
        except Skip:
            return

    def _publish(self, labels: Sequence[Label]) -> None:
        if labels:
            self.publish(block_message([lb.pair_id for lb in labels]))

    # -- reports ------------------------------------------------------------------------
    def report(
        self,
        hit: Any,
        correct: Any,
        *,
        prompt: str | None,
        messages: Sequence[Any] | None,
        entry_id: str | None,
        model: str | None,
        params: Mapping[str, Any] | None,
        namespace: str | None,
        source: str,
        block: bool = True,
    ) -> FeedbackResult:
        """Record one report; see :meth:`semcache.SemanticCache.feedback`.

        ``block=False`` keeps a wrong report on a semantic hit as a label only: the
        pairing is not blocked (an LLM audit that disagreed, unless
        ``Policy.audit_block``; see :mod:`semcache.audit`).

        The label goes to L3; with L3 down, to L2's durable hand-off (any replica drains
        it into L3 once L3 is back); with L2 down as well, it is held in this process
        (at most :data:`MAX_HELD_LABELS`) and stored at the next poll that reaches a
        tier: a crash before then loses it. A block applies in this process at once
        whatever is down, and in the others over pub/sub (Redis up) or, once the label
        reaches L3 (or, with no L3, Redis), through the change log. So with Redis and
        L3 both down, another replica may serve the pairing until then. The invalidation
        of a wrong exact hit keeps the contract of every invalidation.

        Raises:
            InvalidInputError: a bad argument (see the facade).
            UnknownEntryError: ``entry_id`` names no live entry.
            BackendError: the tier refused the label outright (not an outage), or a
                tier was down and ``Policy.on_backend_error="raise"`` (after the label
                was kept, like a write).
        """
        core = self.core
        label = self._label(hit, correct, prompt=prompt, messages=messages, entry_id=entry_id, model=model, params=params, namespace=namespace, source=source, block=block)
        skips: list[Skip] = []
        stored_in, durable = self._persist([label], skips)
        invalidated = 0
        if label.blocks:
            self.apply_blocks([label.pair_id])
            self._publish([label])
        elif not label.correct and label.kind == "exact":
            invalidated = self.invalidate([label.entry_key])  # the stored answer itself is wrong
        verdict = "correct" if label.correct else "wrong"
        core.stats.inc(f"feedback_{verdict}")
        if label.kind == "semantic":
            core.stats.inc(f"feedback_semantic_{verdict}")
        core.chain.raise_deferred(skips)
        return FeedbackResult(
            label_id=label.id,
            verdict=verdict,
            kind=label.kind,
            entry_id=label.entry_key,
            request_key=label.request_key,
            similarity=label.similarity,
            verifier_score=label.verifier_score,
            blocked=label.blocks,
            invalidated=invalidated,
            stored_in=stored_in,
            durable=durable,
        )

    def _label(
        self,
        hit: Any,
        correct: Any,
        *,
        prompt: str | None,
        messages: Sequence[Any] | None,
        entry_id: str | None,
        model: str | None,
        params: Mapping[str, Any] | None,
        namespace: str | None,
        source: str,
        block: bool = True,
    ) -> Label:
        """Validate a report and build its label (nothing is written yet)."""
        if not isinstance(correct, bool):
            raise InvalidInputError(f"correct must be True or False, got {correct!r}")
        if source not in SOURCES:
            raise InvalidInputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if prompt is not None and messages is not None:
            raise InvalidInputError("pass at most one of prompt= or messages=")
        scoped = model is not None or params is not None or namespace is not None or messages is not None
        if hit is not None:
            if not isinstance(hit, Hit):
                raise InvalidInputError(f"hit must be a Hit returned by get() or lookup(), got {type(hit).__name__}")
            if entry_id is not None:
                raise InvalidInputError("pass the Hit or entry_id=, not both")
            entry = hit.entry
            similarity: float | None = _finite(hit.similarity)
            verifier = _finite(getattr(hit, "verifier_score", None))
            text = prompt
            if text is None and messages is None:
                text = getattr(hit, "request_prompt", None)
                if text is None and hit.kind == "exact":
                    text = entry.prompt  # an exact hit answered this very prompt
                if text is None:
                    raise InvalidInputError("a semantic hit does not carry the request's prompt: pass prompt= (the prompt that was looked up)")
            if scoped:
                req = build_request(text, messages=messages, model=model, params=params, namespace=namespace)
                if req.scope != entry.scope:
                    raise InvalidInputError("the request's model, params, namespace or messages are not those of the hit")
                text, request_key = req.text, req.key
            else:
                text = check_text("prompt", text)
                if not normalize_prompt(text):
                    raise InvalidInputError("the prompt is empty")
                request_key = exact_key(entry.scope, text)
            if hit.kind == "exact" and request_key != entry.key:
                raise InvalidInputError("this exact hit answered its own prompt: the prompt given is another one")
            if hit.kind == "semantic" and request_key == entry.key:
                raise InvalidInputError("prompt= is the prompt that was looked up, not the cached one (hit.prompt)")
        else:
            if entry_id is None:
                raise InvalidInputError("pass the Hit a lookup returned, or entry_id= with the request's prompt= (or messages=)")
            if not isinstance(entry_id, str) or not 0 < len(entry_id) <= _MAX_ENTRY_ID or text_problem(entry_id) is not None:
                raise InvalidInputError(f"entry_id must be an entry id (text of 1 to {_MAX_ENTRY_ID} characters)")
            if prompt is None and messages is None:
                raise InvalidInputError("pass the request's prompt= (or messages=) with entry_id=")
            req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
            got = self.fetch(entry_id)
            if got is None:
                raise UnknownEntryError(f"no live entry {entry_id!r}")
            entry = got
            if entry.scope != req.scope:
                raise InvalidInputError("the entry is in another scope: give the model, params and namespace of the lookup")
            text, request_key, verifier = req.text, req.key, None
            similarity = 1.0 if req.key == entry.key else self._similarity(req.text, entry.prompt)
        kind = "exact" if request_key == entry.key else "semantic"
        return Label(
            id=uuid.uuid4().hex,
            pair_id=pair_id(request_key, entry.key),
            request_key=request_key,
            entry_key=entry.key,
            scope=entry.scope,
            namespace=entry.namespace,
            model=entry.model,
            kind=kind,
            prompt=text,
            cached_prompt=entry.prompt,
            correct=correct,
            blocks=kind == "semantic" and not correct and block,
            similarity=similarity,
            verifier_score=verifier,
            source=source,
            created_at=self.core.timer(),
        )

    def _similarity(self, a: str, b: str) -> float | None:
        """The cosine similarity of two prompts by the cache's embedder (``None`` without one,
        or for a prompt the embedder does not take)."""
        core = self.core
        try:
            if core.index is None or not (core.embeddable(a) and core.embeddable(b)):
                return None
            v = core.embed_many([a, b])
        except InvalidInputError:
            return None
        return float(np.clip(np.dot(v[0], v[1]), -1.0, 1.0))

    # -- reading labels back ----------------------------------------------------------
    def labels(self, kind: str | None, namespace: str | None, limit: int | None) -> list[Label]:
        """Every label kept, oldest first: from the tier that keeps them, plus those
        waiting in L2's hand-off or in this process.

        Raises:
            BackendUnavailable: the tier that keeps labels cannot be read.
        """
        chain = self.core.chain
        slot = self._store_slot()
        if slot is None:
            found = self._memory.labels_list(kind, namespace, None)
        else:
            store: Any = slot.backend
            try:
                found = chain.call(slot, lambda: store.labels_list(kind, namespace, limit), defer=True)
            except Skip as skip:
                raise BackendUnavailable(f"{slot.name}, which keeps the feedback labels, cannot be read") from skip.__cause__
        extra: list[Label] = []
        ho = self._handoff()
        if ho is not None:
            s2, b2 = ho
            try:
                extra = [lb for _, lb in chain.call(s2, b2.labels_handoff_items, defer=True)]
            except Skip:
                pass
        with self._lock:
            extra += list(self._held.values())
        seen = {lb.id for lb in found}
        out = found + [lb for lb in extra if lb.id not in seen and lb.matches(kind, namespace)]
        out.sort(key=lambda lb: (lb.created_at, lb.id))
        return out[-limit:] if limit is not None else out


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def load_labels(cache: Any, *, kind: str | None = "semantic", namespace: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Every feedback label kept, oldest first, as rows ``{"prompt", "cached_prompt",
    "correct", "namespace", "entry_id", "similarity", "verifier_score", "source",
    "created_at"}`` (``prompt`` is the request, ``cached_prompt`` the entry's).

    Args:
        cache: a :class:`~semcache.SemanticCache` or :class:`~semcache.AsyncSemanticCache`
            (opened if it is not; this call blocks: from async code, run it in a thread).
        kind: ``"semantic"`` (the default: pairs of different prompts, what a verifier
            is calibrated on), ``"exact"`` (reports on the stored answer itself) or
            ``None`` for both.
        namespace: only this namespace's labels.
        limit: only the newest ``limit`` labels.

    Raises:
        InvalidInputError: a bad ``kind`` or ``limit``.
        BackendUnavailable: the tier that keeps labels cannot be read.
    """
    if kind not in (None, "semantic", "exact"):
        raise InvalidInputError(f"kind must be 'semantic', 'exact' or None, got {kind!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive int or None, got {limit!r}")
    sync = getattr(cache, "sync", cache)
    fb = getattr(sync, "_feedback", None)
    if not isinstance(fb, Feedback):
        raise InvalidInputError(f"load_labels needs a SemanticCache or AsyncSemanticCache, got {type(cache).__name__}")
    sync._ensure_open()
    return [lb.as_row() for lb in fb.labels(kind, namespace, limit)]
