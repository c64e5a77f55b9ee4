"""The cache facades: :class:`SemanticCache` (sync) and :class:`AsyncSemanticCache`.

Read path (see the README): the exact key is looked up L1 → L2 → L3 first and never
pays for an embedding; on a miss the prompt is embedded, the index is searched
*inside the request's scope*, and the nearest candidate whose cosine similarity
clears the threshold and passes every guard is fetched by id L1 → L2 → L3. A hit in
a lower tier is copied into the tiers above with its remaining TTL.

Write path: write-through, L3 first (its commit is the entry's commit point), then
L2, L1, and the index last, so a crash between them is repaired by rebuilding the
index from L3. A tier that fails is skipped for a back-off period and counted; the
caller never sees a tier's failure unless ``on_backend_error="raise"``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from cachetools import LRUCache

from .config import MAX_TTL_SECONDS, UNSET, CacheConfig
from .errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidInputError,
    SerializationError,
)
from .events import EventListener, add_message, apply_event, invalidate_message
from .keys import Request, build_request
from .serde import dumps
from .tiers.base import Backend
from .types import Candidate, Entry, Hit, LookupOutcome, Selector

__all__ = ["SemanticCache"]

log = logging.getLogger("semcache")
T = TypeVar("T")


class _Skip(Exception):
    """A tier was skipped (down, in back-off, or it just failed)."""


@dataclass
class _Slot:
    backend: Any
    name: str
    failures: int = 0
    down_until: float = 0.0
    errors: int = 0
    skipped: int = 0
    #: Invalidations (and replica messages) this tier missed while it was down,
    #: replayed before it serves anything again, so nothing invalidated comes back.
    pending: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    c: Counter[str] = field(default_factory=Counter)

    def inc(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.c[name] += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.c)


#: Missed invalidations kept per tier before it is flushed on recovery instead.
_MAX_PENDING = 10_000


def _validate_ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise InvalidInputError(f"ttl_seconds must be a positive number of seconds or None, got {ttl!r}")
    if not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidInputError(
            f"ttl_seconds must be in (0, {MAX_TTL_SECONDS:.0f}] (None means never expire), got {ttl!r}"
        )
    return float(ttl)


def _validate_threshold(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or not -1.0 <= t <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine similarity in [-1, 1], got {t!r}")
    return float(t)


class SemanticCache:
    """A multi-level semantic cache (synchronous facade).

    Args:
        config: tiers, index, embedder and policy (default: L1 + SQLite + MiniLM).
        timer: the clock, ``time.time`` by default; inject a fake one in tests.
        tiers: ready-made tier backends, top first (overrides the config's tiers).
        embedder: an :class:`~semcache.embedders.base.Embedder` (overrides the config's).

    Use as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        timer: Callable[[], float] = time.time,
        tiers: Sequence[Backend] | None = None,
        embedder: Any = UNSET,
    ) -> None:
        self.config = config or CacheConfig()
        self.timer = timer
        self._given_tiers = list(tiers) if tiers is not None else None
        self._given_embedder = embedder
        self._slots: list[_Slot] = []
        self.embedder: Any = None
        self.index: Any = None
        self._guards: list[Any] = []
        self._stats = _Counters()
        self._state = "new"
        self._open_lock = threading.Lock()
        self._id = uuid.uuid4().hex
        self._listener: EventListener | None = None
        self._sweeper: threading.Thread | None = None
        self._closing = threading.Event()
        self._index_built = False
        self._recent: LRUCache[str, np.ndarray] = LRUCache(maxsize=256)
        self._recent_lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        #: Bumped by every write and invalidation: a lookup that raced one does not
        #: copy what it read into the tiers above (it may be the old entry).
        self._epoch = 0
        self._pub: Any = None

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> SemanticCache:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> str:
        """``new``, ``open`` or ``closed``."""
        return self._state

    def open(self) -> SemanticCache:
        """Connect the tiers, check the schema, load the embedder and rebuild the index.

        Raises:
            SchemaVersionError: L3 is at an older schema revision.
            ConfigurationError: the configuration cannot work.
        """
        with self._open_lock:
            if self._state == "open":
                return self
            if self._state == "closed":
                raise ConfigurationError("this cache was closed; create a new one")
            self._build_tiers()
            self._build_semantic()
            self._state = "open"
        if self.index is not None:
            self._rebuild_index_safe()
        if self._redis_slot() is not None and self.config.redis is not None and self.config.redis.pubsub:
            self._start_listener()
        interval = self.config.policy.sweep_interval_seconds
        if interval is not None and self._sql_slot() is not None:
            self._sweeper = threading.Thread(target=self._sweep_every, args=(interval,), name="semcache-sweep", daemon=True)
            self._sweeper.start()
        return self

    def close(self) -> None:
        """Stop background work and close every tier."""
        if self._state == "closed":
            return
        if self._listener is not None:
            self._listener.stop()
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        for slot in self._slots:
            try:
                slot.backend.close()
            except Exception:  # closing must not fail the caller
                log.debug("closing %s failed", slot.name, exc_info=True)
        self._state = "closed"

    def _ensure_open(self) -> None:
        if self._state != "open":
            if self._state == "closed":
                raise ConfigurationError("this cache is closed")
            self.open()

    def _build_tiers(self) -> None:
        if self._given_tiers is not None:
            backends = self._given_tiers
        else:
            cfg = self.config
            backends = []
            if cfg.memory is not None:
                from .tiers.memory import MemoryBackend

                backends.append(MemoryBackend.from_config(cfg.memory))
            if cfg.redis is not None:
                from .tiers.redis import RedisBackend

                backends.append(RedisBackend.from_config(cfg.redis))
            if cfg.sql is not None:
                from .tiers.sql import SQLBackend

                backends.append(SQLBackend.from_config(cfg.sql))
        self._slots = [_Slot(b, getattr(b, "name", f"t{i}")) for i, b in enumerate(backends)]
        for slot in self._slots:
            opener = getattr(slot.backend, "open", None)
            if opener is None:
                continue
            try:
                opener()
            except BackendError as exc:
                # a tier that is down at start degrades the cache; it is retried later
                self._fail(slot, exc)

    def _build_semantic(self) -> None:
        choice = self._given_embedder if self._given_embedder is not UNSET else self.config.embedder
        if choice is None or not self.config.policy.semantic:
            return
        from .guards import build_guards

        self._guards = build_guards(self.config.policy.guards)
        self.embedder = _resolve_embedder(choice)
        from .index.faiss import FaissIndex

        self.index = FaissIndex(int(self.embedder.dim), self.config.index)

    # -- tier calls with back-off ---------------------------------------------
    def _fail(self, slot: _Slot, exc: BaseException) -> None:
        slot.errors += 1
        self._stats.inc(f"{slot.name}_errors")
        if not isinstance(exc, BackendUnavailable):
            # a failed statement (a constraint, a bad value) says nothing about the
            # tier's health: count it, but keep using the tier
            log.warning("tier %s: %s", slot.name, type(exc).__name__)
            return
        slot.failures += 1
        pol = self.config.policy
        backoff = min(pol.backoff_max_seconds, pol.backoff_initial_seconds * 2 ** (slot.failures - 1))
        slot.down_until = time.monotonic() + backoff
        # the class only: driver messages can carry prompts and payloads
        log.warning("tier %s is unavailable (%s); skipping it for %.1fs", slot.name, type(exc.__cause__ or exc).__name__, backoff)

    def _defer(self, slot: _Slot, method: str, *args: Any) -> None:
        """Remember an invalidation a skipped tier must apply before it serves again."""
        with slot.lock:
            if len(slot.pending) < _MAX_PENDING:
                slot.pending.append((method, args))
            elif not getattr(slot.backend, "stores_embeddings", False):
                # too much was missed to replay: a cache copy tier is emptied instead
                slot.pending = [("invalidate", (Selector.everything(), 0.0))]
            else:
                log.error("tier %s missed more than %d invalidations while down; some may be lost", slot.name, _MAX_PENDING)
        self._stats.inc(f"{slot.name}_deferred")

    def _replay(self, slot: _Slot) -> None:
        with slot.lock:
            todo, slot.pending = slot.pending, []
        for n, (method, args) in enumerate(todo):
            try:
                getattr(slot.backend, method)(*args)
            except BackendError:
                with slot.lock:
                    slot.pending[:0] = todo[n:]
                raise

    def _call(self, slot: _Slot, method: str, *args: Any) -> Any:
        if slot.down_until and time.monotonic() < slot.down_until:
            slot.skipped += 1
            raise _Skip
        try:
            if slot.pending:
                self._replay(slot)
            result = getattr(slot.backend, method)(*args)
        except BackendError as exc:
            self._fail(slot, exc)
            if self.config.policy.on_backend_error == "raise":
                raise
            raise _Skip from exc
        if slot.failures:
            recovered = slot.name
            slot.failures = 0
            slot.down_until = 0.0
            log.info("tier %s recovered", recovered)
            if recovered == "l3" and self.index is not None and not self._index_built:
                threading.Thread(target=self._rebuild_index_safe, daemon=True).start()
        return result

    def _sql_slot(self) -> _Slot | None:
        return next((s for s in self._slots if s.name == "l3" and hasattr(s.backend, "iter_embeddings")), None)

    def _redis_slot(self) -> _Slot | None:
        return next((s for s in self._slots if s.name == "l2" and hasattr(s.backend, "client")), None)

    # -- requests ------------------------------------------------------------
    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> Request:
        """Reduce a prompt or chat messages plus scope fields to a :class:`~semcache.keys.Request`."""
        return build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)

    def threshold_for(self, request: Request, threshold: Any = UNSET) -> float:
        """The similarity threshold for a request: per call, else per scope/namespace, else per cache."""
        if threshold is not UNSET and threshold is not None:
            return _validate_threshold(threshold)
        per = self.config.policy.namespace_thresholds
        if request.scope in per:
            return float(per[request.scope])
        if request.namespace is not None and request.namespace in per:
            return float(per[request.namespace])
        return self.config.policy.similarity_threshold

    # -- embedding -------------------------------------------------------------
    def embeddable(self, text: str) -> bool:
        """Whether ``text`` takes part in semantic matching (see ``Policy.long_prompt``).

        Raises:
            InvalidInputError: the text is too long and ``long_prompt="error"``.
        """
        if self.embedder is None:
            return False
        limit = getattr(self.embedder, "max_tokens", None)
        if limit is None:
            return True
        if self.embedder.count_tokens(text) <= limit:
            return True
        mode = self.config.policy.long_prompt
        if mode == "error":
            raise InvalidInputError(
                f"the prompt is longer than the embedder's window of {limit} tokens "
                "(set Policy.long_prompt='exact_only' or 'truncate' to cache it)"
            )
        if mode == "exact_only":
            self._stats.inc("long_prompts_exact_only")
            return False
        self._stats.inc("long_prompts_truncated")
        return True

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the cache's embedder, validated: ``(n, dim)`` unit rows.

        Raises:
            EmbeddingError: the embedder returned NaN, a wrong shape or dimension.
        """
        from .embedders.base import check_embeddings

        if self.embedder is None:
            raise ConfigurationError("this cache has no embedder (semantic matching is off)")
        out = self.embedder.embed(list(texts))
        return check_embeddings(out, len(texts), self.index.dim)

    def _embed(self, request: Request) -> np.ndarray | None:
        # a miss is usually followed by a store of the same prompt (decorator, proxy):
        # keep the last vectors so that store does not embed the text again
        with self._recent_lock:
            v: np.ndarray | None = self._recent.get(request.text)
        if v is not None:
            return v
        if not self.embeddable(request.text):
            return None
        t0 = time.perf_counter()
        v = self.embed_many([request.text])[0]
        self._stats.inc("embeddings")
        self._stats.inc("embed_us", int((time.perf_counter() - t0) * 1e6))
        with self._recent_lock:
            self._recent[request.text] = v
        return v

    # -- reads ---------------------------------------------------------------
    def _find(self, key: str, now: float) -> tuple[tuple[Entry, int] | None, bool]:
        """Find a live entry by key, top tier first, without promoting it.

        Returns the entry and its tier index (or ``None``), and whether a tier that
        was asked before the answer was skipped (down): then a ``None`` is not proof
        that the entry is gone.
        """
        skipped = False
        for i, slot in enumerate(self._slots):
            try:
                entry = self._call(slot, "get", key, now)
            except _Skip:
                skipped = True
                continue
            if entry is not None and not entry.expired(now) and entry.key == key:
                return (entry, i), skipped
        return None, skipped

    def _fetch(self, key: str, now: float) -> tuple[Entry, _Slot] | None:
        """Find a live entry by key, top tier first, promoting it upward."""
        epoch = self._epoch
        found, _ = self._find(key, now)
        return None if found is None else self._promote(found[0], found[1], now, epoch)

    def _promote(self, entry: Entry, i: int, now: float, epoch: int) -> tuple[Entry, _Slot]:
        """Copy an entry found in tier ``i`` into the tiers above (remaining TTL).

        ``epoch`` is :attr:`_epoch` from before the read: if a write or an
        invalidation happened since, what was read may be stale and is not copied.
        """
        slot = self._slots[i]
        if epoch != self._epoch:
            return entry, slot
        if self.config.policy.sliding_expiry and entry.ttl_seconds is not None:
            entry = entry.with_expiry(now + entry.ttl_seconds)
            for tier in self._slots[i:]:
                try:
                    if hasattr(tier.backend, "touch"):
                        # only the expiry moves: L3 keeps its vector
                        self._call(tier, "touch", entry.key, entry.expires_at, now)
                    else:
                        self._call(tier, "set", entry, now)
                except _Skip:
                    pass
        for upper in self._slots[:i]:
            try:
                self._call(upper, "set", entry, now)
                self._stats.inc(f"promotions_{upper.name}")
            except _Skip:
                pass
        return entry, slot
        return None

    def get_entry(self, key: str) -> Entry | None:
        """Return the live entry with id ``key`` from the first tier that has it."""
        self._ensure_open()
        found = self._fetch(key, self.timer())
        return None if found is None else found[0]

    def get(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        threshold: Any = UNSET,
        semantic: bool = True,
    ) -> Hit | None:
        """Look up a prompt (or chat messages): exact first, then semantic.

        Args:
            prompt: the prompt text (or pass ``messages``).
            messages: an OpenAI-style message list; the last user turn is matched.
            model, params, namespace: scope fields that must match exactly.
            threshold: cosine similarity for this call (default: per scope, then per cache).
            semantic: ``False`` for an exact-only lookup.

        Returns:
            A :class:`~semcache.types.Hit`, or ``None`` on a miss.

        Raises:
            InvalidInputError: an empty prompt, bad messages or a bad threshold.
        """
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return self.lookup(req, threshold=threshold, semantic=semantic)

    def lookup(
        self,
        request: Request,
        *,
        threshold: Any = UNSET,
        semantic: bool = True,
        embedding: np.ndarray | None = None,
        exact: bool = True,
    ) -> Hit | None:
        """Look up a prepared :class:`~semcache.keys.Request`.

        ``embedding`` may be precomputed (it is checked); ``exact=False`` skips the
        exact path, for a caller that already ran :meth:`lookup_exact`.
        """
        self._ensure_open()
        thr = self.threshold_for(request, threshold)
        now = self.timer()
        if exact:
            hit = self._exact(request, now)
            if hit is not None:
                return hit
        if semantic and self.index is not None:
            hit = self._semantic(request, now, thr, embedding)
            if hit is not None:
                return hit
        self._stats.inc("misses")
        return None

    def lookup_memory(self, request: Request) -> Hit | None:
        """An exact hit from L1 alone, never blocking; ``None`` is not a miss (nothing else was asked)."""
        if self._state != "open" or not self._slots or self._slots[0].name != "l1":
            return None
        if self.config.policy.sliding_expiry:
            return None  # sliding expiry writes to every tier: take the full path
        slot = self._slots[0]
        if slot.pending:
            return None
        now = self.timer()
        entry = slot.backend.get(request.key, now)
        if entry is None or entry.scope != request.scope:
            return None
        return self._hit(entry, "l1", "exact", 1.0, now)

    def lookup_many(self, requests: Sequence[Request], *, thresholds: Sequence[Any] | None = None) -> list[LookupOutcome]:
        """Look up a batch: exact paths first (no embedding), then one embedding call for
        every remaining embeddable text, then each semantic lookup.

        One request's error (a bad threshold, a prompt too long) is returned in its
        outcome and does not fail the others; an embedder failure fails the batch.
        """
        self._ensure_open()
        thr = list(thresholds) if thresholds is not None else [UNSET] * len(requests)
        if len(thr) != len(requests):
            raise InvalidInputError("thresholds must have one item per request")
        out: list[LookupOutcome | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            try:
                hit = self.lookup_exact(req)
                if hit is not None:
                    out[i] = LookupOutcome(hit)
                elif self.index is not None and self.embeddable(req.text):
                    todo.append(i)
            except Exception as exc:  # noqa: BLE001 - this request's error, not the batch's
                out[i] = LookupOutcome(error=exc)
        vectors: dict[int, np.ndarray] = {}
        if todo:
            matrix = self.embed_many([requests[i].text for i in todo])
            self._stats.inc("embeddings", len(todo))
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

    def list_entries(self, selector: Selector | None = None, *, limit: int = 50, offset: int = 0) -> list[Entry]:
        """Live entries matching ``selector`` (``None``: all), newest first, one page (from L3, else L2).

        Raises:
            InvalidInputError: no tier can list (L1 only).
        """
        from .admin import list_entries

        self._ensure_open()
        return list_entries(self, selector, self.timer(), limit=limit, offset=offset)

    def count(self, selector: Selector | None = None) -> int:
        """How many live entries ``selector`` matches (``None``: all); nothing is removed.

        Raises:
            InvalidInputError: no tier can count (L1 only).
        """
        from .admin import count_matching

        self._ensure_open()
        return count_matching(self, selector or Selector.everything(), self.timer())

    def lookup_exact(self, request: Request) -> Hit | None:
        """The exact path alone: L1 → L2 → L3 by key, promoting; never embeds, counts no miss."""
        self._ensure_open()
        return self._exact(request, self.timer())

    def _exact(self, request: Request, now: float) -> Hit | None:
        found = self._fetch(request.key, now)
        if found is None:
            return None
        entry, slot = found
        if entry.scope != request.scope:  # a hash collision: never serve across scopes
            return None
        return self._hit(entry, slot.name, "exact", 1.0, now)

    def _hit(self, entry: Entry, tier: str, kind: str, sim: float, now: float) -> Hit | None:
        try:
            value = entry.value
        except SerializationError:
            # unreadable value: a miss, removed everywhere
            self._stats.inc("corrupt_removed")
            self._delete_everywhere([entry.key])
            return None
        self._stats.inc(f"hits_{tier}_{kind}")
        self._count_savings(entry)
        return Hit(
            value=value,
            key=entry.key,
            tier=tier,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            similarity=sim,
            prompt=entry.prompt,
            age_seconds=max(0.0, now - entry.created_at),
            ttl_seconds_left=entry.ttl_left(now),
            entry=entry,
        )

    def _count_savings(self, entry: Entry) -> None:
        self._count_saved(entry.metadata, entry.model)

    def count_saved_call(self, metadata: Mapping[str, Any] | None = None, *, model: str | None = None) -> None:
        """Count a call saved without a hit (it waited for an identical call), with its tokens and cost."""
        self._stats.inc("coalesced_calls")
        self._count_saved(metadata, model)

    def _count_saved(self, metadata: Mapping[str, Any] | None, model: str | None) -> None:
        meta = metadata or {}
        usage = meta.get("usage")
        if isinstance(usage, Mapping):
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                v = usage.get(k)
                if isinstance(v, int) and v >= 0:
                    self._stats.inc(f"saved_{k}", v)
        cost = meta.get("cost")
        if not isinstance(cost, (int, float)) and self.config.prices is not None:
            # priced at hit time, so a price table set later also covers older entries
            cost = self.config.prices.cost_usd(model or meta.get("response_model"), usage)
        if isinstance(cost, (int, float)) and cost > 0:
            self._stats.inc("saved_cost_microusd", round(cost * 1e6))

    def _candidates(self, request: Request, v: np.ndarray) -> list[tuple[str, float]]:
        return self.index.search(request.scope, v, self.config.index.top_k)  # type: ignore[no-any-return]

    def _semantic(self, request: Request, now: float, thr: float, v: np.ndarray | None) -> Hit | None:
        if v is None:
            v = self._embed(request)
            if v is None:
                return None
        else:
            from .embedders.base import check_embeddings

            v = check_embeddings(v, 1, self.index.dim)[0]  # a precomputed vector is checked too
        self._stats.inc("semantic_lookups")
        for key, sim in self._candidates(request, v):
            if sim < thr:
                break
            epoch = self._epoch
            found, skipped = self._find(key, now)
            if found is None:
                if not skipped:
                    self.index.remove([key])  # expired or deleted elsewhere
                continue
            entry, tier = found
            if entry.scope != request.scope:
                continue
            results = [g(request.text, entry.prompt) for g in self._guards]
            failed = [r for r in results if not r.passed]
            if failed:
                for r in failed:
                    self._stats.inc(f"guard_rejections_{r.name}")
                # the nearest candidate is a different question; anything further away
                # is less likely to be the same one, so this is a miss (and a rejected
                # candidate is not promoted)
                return None
            entry, slot = self._promote(entry, tier, now, epoch)
            return self._hit(entry, slot.name, "semantic", min(1.0, sim), now)
        return None

    def explain(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        threshold: Any = UNSET,
        k: int = 5,
    ) -> dict[str, Any]:
        """Explain the decision for a prompt: exact key, nearest candidates and checks.

        Read-only: nothing is promoted and no stats change except embedding counts.
        """
        self._ensure_open()
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        thr = self.threshold_for(req, threshold)
        now = self.timer()
        out: dict[str, Any] = {"key": req.key, "scope": req.scope, "threshold": thr, "candidates": []}
        exact = self._peek(req.key, now)
        if exact is not None:
            out["decision"] = "hit"
            out["kind"] = "exact"
            out["entry_id"] = req.key
            return out
        if self.index is None:
            out["decision"] = "miss"
            out["reason"] = "no exact entry; semantic matching is off"
            return out
        v = self._embed(req)
        if v is None:
            out["decision"] = "miss"
            out["reason"] = "no exact entry; the prompt is too long for semantic matching"
            return out
        decided = False
        cands: list[Candidate] = []
        for key, sim in self.index.search(req.scope, v, max(k, 1)):
            entry = self._peek(key, now)
            if entry is None:
                cands.append(Candidate(key, sim, None, sim >= thr, (), "gone (expired or deleted)"))
                continue
            results = [g(req.text, entry.prompt) for g in self._guards]
            gtuple = tuple((r.name, r.passed, r.detail) for r in results)
            if decided:
                decision = "not considered"
            elif sim < thr:
                decision = "below threshold"
                decided = True
            elif all(r.passed for r in results):
                decision = "hit"
                decided = True
                out["decision"] = "hit"
                out["kind"] = "semantic"
                out["entry_id"] = key
                out["similarity"] = sim
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

    def _peek(self, key: str, now: float) -> Entry | None:
        for slot in self._slots:
            try:
                e = self._call(slot, "get", key, now)
            except _Skip:
                continue
            if e is not None and not e.expired(now):
                return e  # type: ignore[no-any-return]
        return None

    # -- writes --------------------------------------------------------------
    def set(
        self,
        prompt: str | None,
        value: Any,
        *,
        messages: Sequence[Any] | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        ttl_seconds: Any = UNSET,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Store a response under a prompt (or chat messages) in every tier and the index.

        Args:
            prompt: the prompt text, or ``None`` with ``messages``.
            value: bytes or any JSON-serialisable value.
            ttl_seconds: seconds to live; ``None`` never expires; default from the policy.
            tags: labels to invalidate by later.
            metadata: JSON-serialisable extras (``usage`` feeds the savings counters).

        Returns:
            The stored :class:`~semcache.types.Entry`.

        Raises:
            InvalidInputError: empty prompt, bad TTL, bad tags.
            SerializationError: the value or metadata cannot be serialised.
        """
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return self.store(req, value, ttl_seconds=ttl_seconds, tags=tags, metadata=metadata)

    def _make_entry(
        self,
        request: Request,
        value: Any,
        *,
        ttl_seconds: Any,
        tags: Iterable[str],
        metadata: Mapping[str, Any] | None,
        now: float,
        embedding: np.ndarray | None,
    ) -> Entry:
        ttl = self.config.policy.default_ttl_seconds if ttl_seconds is UNSET else _validate_ttl(ttl_seconds)
        if isinstance(tags, str):
            raise InvalidInputError("tags must be a list of strings, not a string")
        tag_t = tuple(dict.fromkeys(tags))
        if not all(isinstance(t, str) and t and len(t) <= 255 for t in tag_t):
            raise InvalidInputError("tags must be non-empty strings of at most 255 characters")
        meta = dict(metadata or {})
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"metadata must be JSON-serialisable: {exc}") from exc
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
            embedding=None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes(),
            embedder_id=None if embedding is None else self.embedder.model_id,
            ttl_seconds=ttl,
        )

    def store(
        self,
        request: Request,
        value: Any,
        *,
        ttl_seconds: Any = UNSET,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        embedding: np.ndarray | None = None,
    ) -> Entry:
        """Store a response for a prepared request (``embedding`` may be precomputed)."""
        self._ensure_open()
        now = self.timer()
        # validate (and serialise) everything before embedding or writing anything
        entry = self._make_entry(request, value, ttl_seconds=ttl_seconds, tags=tags, metadata=metadata, now=now, embedding=None)
        if embedding is not None:
            from .embedders.base import check_embeddings

            if self.index is None:
                raise ConfigurationError("this cache has no embedder (semantic matching is off)")
            embedding = check_embeddings(embedding, 1, self.index.dim)[0]
        elif self.index is not None:
            embedding = self._embed(request)
        if embedding is not None:
            entry = replace(entry, embedding=np.asarray(embedding, dtype=np.float32).tobytes(), embedder_id=self.embedder.model_id)
        self._write([entry], now)
        return entry

    def set_many(self, items: Iterable[Mapping[str, Any]], *, batch_size: int = 256) -> list[Entry]:
        """Store many responses, embedding in batches (the fast way to warm a cache).

        Each item is a mapping with ``value`` and either ``prompt`` or ``messages``,
        plus optional ``model``, ``params``, ``namespace``, ``ttl_seconds``, ``tags``,
        ``metadata``. Every item is validated (and serialised) before anything is
        embedded or written: one bad item stores nothing. The same prompt twice: the
        last one wins, as with :meth:`set`.
        """
        self._ensure_open()
        now = self.timer()
        entries: list[Entry] = []
        texts: list[str] = []
        for it in items:
            if not isinstance(it, Mapping) or "value" not in it:
                raise InvalidInputError("each item must be a mapping with a 'value'")
            req = build_request(
                it.get("prompt"),
                messages=it.get("messages"),
                model=it.get("model"),
                params=it.get("params"),
                namespace=it.get("namespace"),
            )
            entries.append(
                self._make_entry(
                    req,
                    it["value"],
                    ttl_seconds=it.get("ttl_seconds", UNSET),
                    tags=it.get("tags", ()),
                    metadata=it.get("metadata"),
                    now=now,
                    embedding=None,
                )
            )
            texts.append(req.text)
        out: list[Entry] = []
        for i in range(0, len(entries), batch_size):
            out.extend(self._set_batch(entries[i : i + batch_size], texts[i : i + batch_size], now))
        return out

    def _set_batch(self, entries: list[Entry], texts: list[str], now: float) -> list[Entry]:
        if self.index is not None:
            todo = [i for i, t in enumerate(texts) if self.embeddable(t)]
            if todo:
                m = self.embed_many([texts[i] for i in todo])
                self._stats.inc("embeddings", len(todo))
                mid = self.embedder.model_id
                for j, i in enumerate(todo):
                    entries[i] = replace(entries[i], embedding=m[j].tobytes(), embedder_id=mid)
        entries = list({e.key: e for e in entries}.values())
        self._write(entries, now)
        return entries

    def _write(self, entries: list[Entry], now: float) -> None:
        self._epoch += 1
        # bottom tier first: L3's commit is the commit point
        lean = [replace(e, embedding=None) if e.embedding is not None else e for e in entries]
        for slot in reversed(self._slots):
            # only L3 keeps vectors (for rebuilds); L1/L2 copies would just cost memory
            batch = entries if getattr(slot.backend, "stores_embeddings", False) else lean
            try:
                if len(batch) > 1 and hasattr(slot.backend, "set_many"):
                    self._call(slot, "set_many", batch, now)
                else:
                    for e in batch:
                        self._call(slot, "set", e, now)
            except _Skip:
                # the tier may still hold an older value under these keys: drop it
                # before the tier serves again
                self._defer(slot, "delete", [e.key for e in entries])
                continue
        self._stats.inc("sets", len(entries))
        if self.index is not None:
            by_scope: dict[str, list[Entry]] = {}
            for e in entries:
                if e.embedding is not None:
                    by_scope.setdefault(e.scope, []).append(e)
                elif e.key in self.index:
                    self.index.remove([e.key])  # replaced by an exact-only entry
            for scope, es in by_scope.items():
                vecs = np.frombuffer(b"".join(e.embedding for e in es), dtype=np.float32).reshape(len(es), -1)  # type: ignore[misc]
                self.index.add(scope, [e.key for e in es], vecs)
        self._publish(add_message(entries))

    # -- deletes and invalidation --------------------------------------------
    def _delete_everywhere(self, keys: Sequence[str]) -> None:
        self._epoch += 1
        for slot in self._slots:
            try:
                self._call(slot, "delete", list(keys))
            except _Skip:
                self._defer(slot, "delete", list(keys))
        if self.index is not None:
            self.index.remove(keys)
        self._publish(invalidate_message(keys, None))

    def delete(self, key: str) -> bool:
        """Delete one entry by id from every tier and the index; return whether it existed."""
        return self.invalidate(keys=[key]) > 0

    def invalidate(
        self,
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        scope: str | None = None,
        namespace: str | None = None,
        model: str | None = None,
        tag: str | None = None,
        older_than_seconds: float | None = None,
        prompt_pattern: str | None = None,
    ) -> int:
        """Remove matching entries from every tier, the index and other replicas' L1.

        Criteria combine with AND. Returns how many distinct entries were removed.

        Raises:
            InvalidInputError: no criterion given (use :meth:`flush` to remove everything).
        """
        all_keys = tuple(keys) + ((key,) if key is not None else ())
        if older_than_seconds is not None and (
            isinstance(older_than_seconds, bool)
            or not isinstance(older_than_seconds, (int, float))
            or math.isnan(older_than_seconds)
            or older_than_seconds < 0
        ):
            raise InvalidInputError("older_than_seconds must be a non-negative number")
        sel = Selector(
            keys=all_keys,
            scope=scope,
            namespace=namespace,
            model=model,
            tag=tag,
            older_than_seconds=older_than_seconds,
            prompt_pattern=prompt_pattern,
        )
        if sel.is_empty():
            raise InvalidInputError("name at least one criterion to invalidate (or call flush())")
        return self.invalidate_selector(sel)

    def flush(self) -> int:
        """Remove every entry from every tier and the index."""
        return self.invalidate_selector(Selector.everything())

    def invalidate_selector(self, selector: Selector) -> int:
        """Remove every entry ``selector`` matches; return how many distinct entries went."""
        self._ensure_open()
        now = self.timer()
        self._epoch += 1
        gone: set[str] = set()
        for slot in self._slots:
            try:
                gone.update(self._call(slot, "invalidate", selector, now))
            except _Skip:
                # applied when the tier is back, before it serves anything
                self._defer(slot, "invalidate", selector, now)
        if self.index is not None and gone:
            self.index.remove(list(gone))
        if self.index is not None and selector.all:
            self.index.clear()
        self._stats.inc("invalidated", len(gone))
        self._publish(invalidate_message(gone, selector))
        return len(gone)

    def _sweep_every(self, interval: float) -> None:
        while not self._closing.wait(interval):
            try:
                n = self.sweep()
                if n:
                    log.info("swept %d expired entries from L3", n)
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.warning("sweep failed", exc_info=True)

    def sweep(self) -> int:
        """Delete expired rows from L3 (and their vectors from the index); return how many."""
        self._ensure_open()
        slot = self._sql_slot()
        if slot is None:
            return 0
        try:
            keys = self._call(slot, "sweep", self.timer())
        except _Skip:
            return 0
        if self.index is not None and keys:
            self.index.remove(keys)
        return len(keys)

    # -- the index -------------------------------------------------------------
    def _rebuild_index_safe(self) -> None:
        try:
            self.rebuild_index()
        except BackendError as exc:
            log.warning("could not rebuild the index from L3 (%s); it fills as entries are stored", exc)

    def rebuild_index(self, *, reembed: bool = False, progress: bool | None = None) -> int:
        """Rebuild the in-process index from L3; return how many vectors it holds.

        Only entries embedded by this cache's embedder are loaded; with ``reembed``,
        live entries with no (or another embedder's) vector are embedded again and
        their vectors written back to L3 (the repair after a crash or a model change).
        """
        self._ensure_open()
        if self.index is None:
            return 0
        slot = self._sql_slot()
        if slot is None:
            return len(self.index)
        with self._rebuild_lock:
            return self._rebuild(slot.backend, reembed=reembed, progress=progress)

    def _rebuild(self, sql: Any, *, reembed: bool, progress: bool | None) -> int:
        # fill a new index and swap it in at the end: lookups keep the old one meanwhile,
        # and a failure (L3 down) leaves it as it was
        from .index.faiss import FaissIndex

        old, fresh = self.index, FaissIndex(self.index.dim, self.config.index)
        old.start_journal()
        now = self.timer()
        mid = self.embedder.model_id
        show = _want_progress(self.config.index.progress if progress is None else progress)
        total = sql.count(now, embedder_id=mid) if show else None
        bar = _progress(total, "rebuilding index", show)
        try:
            for batch in sql.iter_embeddings(mid, now):
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
                self._reembed(sql, now, bar, fresh)
        except BaseException:
            old.take_journal()
            raise
        finally:
            bar.close()
        # writes and invalidations that reached the old index meanwhile
        fresh.replay(old.take_journal())
        self.index = fresh
        self._index_built = True
        return len(fresh)

    def _reembed(self, sql: Any, now: float, bar: Any, index: Any) -> None:
        offset = 0
        while True:
            entries = sql.list_entries(None, now, limit=500, offset=offset)
            if not entries:
                return
            offset += len(entries)
            todo = [e for e in entries if e.key not in index and self.embeddable(e.prompt)]
            if not todo:
                continue
            m = self.embed_many([e.prompt for e in todo])
            for e, v in zip(todo, m):
                sql.set_embedding(e.key, v.tobytes(), self.embedder.model_id)
                index.add(e.scope, [e.key], v.reshape(1, -1))
            bar.update(len(todo))

    def check_index(self) -> dict[str, Any]:
        """Compare the index with L3: counts, and keys missing on either side."""
        self._ensure_open()
        if self.index is None:
            return {"semantic": False}
        slot = self._sql_slot()
        if slot is None:
            return {"semantic": True, "index": len(self.index), "l3": None}
        now = self.timer()
        l3_keys: set[str] = set()
        for batch in slot.backend.iter_embeddings(self.embedder.model_id, now):
            l3_keys.update(k for k, _, _ in batch)
        idx = self.index.keys()
        return {
            "semantic": True,
            "embedder": self.embedder.model_id,
            "l3_embedded": len(l3_keys),
            "index": len(idx),
            "missing_from_index": len(l3_keys - idx),
            "orphans_in_index": len(idx - l3_keys),
            "l3_total_live": slot.backend.count(now),
            "consistent": l3_keys == idx,
        }

    # -- replicas (see semcache.events) -------------------------------------------
    def _publish(self, message: dict[str, Any]) -> None:
        slot = self._redis_slot()
        if slot is None or self.config.redis is None or not self.config.redis.pubsub:
            return
        message["origin"] = self._id
        args = (f"{self.config.redis.prefix}events", json.dumps(message))
        try:
            self._call(slot, "publish", *args)
        except _Skip:
            if message.get("op") == "inv":
                self._defer(slot, "publish", *args)  # other replicas must still hear of it

    def _start_listener(self) -> None:
        slot = self._redis_slot()
        assert slot is not None and self.config.redis is not None
        self._listener = EventListener(
            slot.backend.client, f"{self.config.redis.prefix}events", self.apply_event, self._events_missed
        )
        self._listener.start()

    def _events_missed(self) -> None:
        # the subscription dropped: invalidations may have been missed, so this
        # replica's L1 copies can no longer be trusted (the shared tiers are)
        mem = next((s.backend for s in self._slots if s.name == "l1"), None)
        if mem is not None:
            mem.clear()
            self._stats.inc("l1_cleared_after_event_gap")

    def apply_event(self, msg: Mapping[str, Any]) -> None:
        """Apply an invalidation or index update published by another replica."""
        if msg.get("origin") == self._id:
            return
        apply_event(
            msg,
            memory=next((s.backend for s in self._slots if s.name == "l1"), None),
            index=self.index,
            embedder_id=None if self.embedder is None else self.embedder.model_id,
            now=self.timer(),
        )

    # -- stats -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits per tier and kind, misses, sets, evictions, tier errors, L1 bytes, index size."""
        c = self._stats.snapshot()
        hits = {k[5:]: v for k, v in c.items() if k.startswith("hits_")}
        out: dict[str, Any] = {
            "hits": sum(hits.values()),
            "hits_by": hits,
            "misses": c.get("misses", 0),
            "sets": c.get("sets", 0),
            "semantic_lookups": c.get("semantic_lookups", 0),
            "embeddings": c.get("embeddings", 0),
            "invalidated": c.get("invalidated", 0),
            "corrupt_removed": c.get("corrupt_removed", 0),
            "guard_rejections": {k[17:]: v for k, v in c.items() if k.startswith("guard_rejections_")},
            "long_prompts_exact_only": c.get("long_prompts_exact_only", 0),
            "saved_tokens": c.get("saved_total_tokens", 0),
            "saved_cost_usd": c.get("saved_cost_microusd", 0) / 1e6,
            # a hit, or a call that waited for an identical one, is an LLM call not made
            "saved_calls": sum(hits.values()) + c.get("coalesced_calls", 0),
            "coalesced_calls": c.get("coalesced_calls", 0),
            "tiers": {},
        }
        for tier in ("l1", "l2", "l3"):
            out[f"hits_{tier}"] = sum(v for k, v in hits.items() if k.startswith(tier))
        for slot in self._slots:
            try:
                ts = dict(slot.backend.stats())
            except Exception:  # noqa: BLE001 - a third-party tier's stats must not break ours
                ts = {}
            ts.update(
                errors=slot.errors,
                skipped=slot.skipped,
                down=bool(slot.down_until and time.monotonic() < slot.down_until),
            )
            out["tiers"][slot.name] = ts
        l1 = out["tiers"].get("l1", {})
        out["evictions"] = l1.get("evictions", 0)
        out["l1_bytes"] = l1.get("bytes", 0)
        out["tier_errors"] = {s.name: s.errors for s in self._slots}
        if self.index is not None:
            out["index"] = self.index.stats()
            out["embedder"] = self.embedder.model_id
        return out

    def health(self) -> dict[str, Any]:
        """Ping every tier: ``{"l1": "ok", "l2": "down: ...", ...}``."""
        self._ensure_open()
        out: dict[str, Any] = {}
        for slot in self._slots:
            ping = getattr(slot.backend, "ping", None)
            if ping is None:
                out[slot.name] = "ok"
                continue
            try:
                ping()
                out[slot.name] = "ok"
            except BackendError as exc:
                out[slot.name] = f"down: {exc}"
        return out

    @property
    def semantic(self) -> bool:
        """Whether the cache matches semantically at all (it has an embedder and an index)."""
        return self.index is not None

    @property
    def tiers(self) -> list[Any]:
        """The tier backends, top first."""
        return [s.backend for s in self._slots]

    # -- the decorator (semcache/decorator.py) ------------------------------------
    def cached(self, fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Cache a sync function that calls an LLM: ``@cache.cached`` or ``@cache.cached(...)``.

        Args:
            fn: the function (omit it to get a decorator).
            **kwargs: see :class:`~semcache.decorator.CachedFunction` (``model``,
                ``namespace``, ``ttl_seconds``, ``threshold``, ``tags``, ``should_cache``,
                ``lock``, ...).

        Returns:
            The wrapped function, or a decorator.

        Raises:
            ConfigurationError: ``fn`` is async, or its prompt cannot be read.
        """
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def wrap(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Return a cached version of an existing callable, e.g. ``client.chat.completions.create``.

        Raises:
            ConfigurationError: as for :meth:`cached`.
        """
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def options(self, **kwargs: Any) -> Any:
        """Per-call controls for this cache's cached functions, as a ``with`` block.

        ``bypass``, ``lookup``, ``store``, ``semantic``, ``ttl_seconds``, ``threshold``,
        ``tags``, ``namespace``: see :func:`semcache.decorator.options`.
        """
        from .decorator import options

        return options(self, **kwargs)


def _want_progress(flag: bool | None) -> bool:
    import sys

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


def _resolve_embedder(choice: Any) -> Any:
    """Turn the config's ``embedder`` value into an Embedder object."""
    from . import embedders

    if choice == "default":
        return embedders.default_embedder()
    if isinstance(choice, str):
        return embedders.SentenceTransformerEmbedder(choice)
    if hasattr(choice, "embed") and hasattr(choice, "dim") and hasattr(choice, "model_id"):
        return choice
    if callable(choice):
        probe = np.asarray(choice(["semcache dimension probe"]), dtype=np.float32)
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ConfigurationError("a callable embedder must map a list of n texts to an (n, dim) array")
        name = f"callable:{getattr(choice, '__module__', '?')}.{getattr(choice, '__qualname__', type(choice).__name__)}"
        return embedders.CallableEmbedder(choice, dim=int(probe.shape[1]), model_id=name)
    raise ConfigurationError(
        "embedder must be 'default', None, a sentence-transformers model name, an Embedder or a callable"
    )
