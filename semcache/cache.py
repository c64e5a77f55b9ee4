"""The synchronous facade, :class:`SemanticCache`: lifecycle and the public API.

The work is done by one module per concept, each readable top to bottom:
:mod:`semcache.chain` (tiers, back-off, what a tier missed, replay),
:mod:`semcache.lookup` (the read path), :mod:`semcache.store` (the write and
invalidation path), :mod:`semcache.reindex` (the index), :mod:`semcache.replicas`
(events, the change log), :mod:`semcache.feedback` (reports on hits) and
:mod:`semcache.stats`. The consistency contract they
keep together is stated in the README ("Consistency").
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .audit import Auditor
from .chain import TierChain
from .config import UNSET, CacheConfig
from .core import Core
from .errors import ConfigurationError
from .feedback import Feedback, FeedbackResult
from .keys import Request, build_request
from .lookup import Reader
from .reindex import Reindexer
from .replicas import Replicas
from .stats import Counters, collect, namespace_report, namespace_rows
from .store import Writer
from .tiers import build_tiers
from .tiers.base import Backend
from .types import Entry, Hit, LookupOutcome, Selector

__all__ = ["SemanticCache", "State"]


class State(str, enum.Enum):
    """A cache's lifecycle."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class SemanticCache:
    """A multi-level semantic cache (synchronous facade).

    Args:
        config: tiers, index, embedder and policy (default: L1 + SQLite + MiniLM).
        timer: the clock, ``time.time`` by default; inject a fake one in tests.
        tiers: ready-made tier backends, top first (overrides the config's tiers).
        embedder: an :class:`~semcache.embedders.base.Embedder` (overrides the config's).
        monotonic: the clock of tier back-off windows, ``time.monotonic`` by default.

    Use as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, config: CacheConfig | None = None, *, timer: Callable[[], float] = time.time, tiers: Sequence[Backend] | None = None, embedder: Any = UNSET, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config or CacheConfig()
        self._given_tiers = list(tiers) if tiers is not None else None
        self._given_embedder = embedder
        self._monotonic = monotonic
        self._state = State.NEW
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._stats = Counters()
        self._core = Core(self.config, timer, TierChain([], self.config.policy, self._stats), self._stats)
        self._replicas: Replicas | None = None
        self._feedback = Feedback(self._core)
        # the read path skips a candidate whose pairing with the request was reported wrong
        self._core.blocked = self._feedback.blocked
        self._audits = Auditor(self._core, self._feedback)

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> SemanticCache:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> str:
        """``new``, ``open`` or ``closed``."""
        return self._state.value

    def open(self) -> SemanticCache:
        """Connect the tiers, check the schema, load the embedder and rebuild the index
        (``SchemaVersionError`` when L3 needs ``semcache db upgrade``)."""
        with self._open_lock:
            if self._state is State.OPEN:
                return self
            if self._state is State.CLOSED:
                raise ConfigurationError("this cache was closed; create a new one")
            core = self._core
            tiers = self._given_tiers if self._given_tiers is not None else build_tiers(self.config)
            core.chain = TierChain(tiers, self.config.policy, self._stats, monotonic=self._monotonic, timer=lambda: core.timer())
            self._reindexer = Reindexer(core)
            core.chain.on_recover = self._reindexer.on_tier_recovered
            core.chain.open()
            choice = self._given_embedder if self._given_embedder is not UNSET else self.config.embedder
            core.load_semantic(choice)
            self._reader = Reader(core)
            self._replicas = Replicas(core, uuid.uuid4().hex)
            self._writer = Writer(core, self._replicas.publish)
            core.on_corrupt = self._writer.delete_everywhere
            fb = self._feedback
            fb.publish, fb.fetch = self._replicas.publish, self.get_entry
            fb.invalidate = lambda keys: self.invalidate(keys=keys)
            self._replicas.on_blocks, self._replicas.on_lost_track, self._replicas.on_tick = fb.apply_blocks, fb.lost_track, fb.tick
            self._state = State.OPEN
        if core.index is not None:
            self._reindexer.rebuild_safe()
        self._replicas.start()
        fb.load()  # after the log's head was read: a block reported meanwhile is in one or the other
        interval = self.config.policy.sweep_interval_seconds
        if interval is not None and core.chain.sweeper is not None:
            self._sweeper = threading.Thread(target=self._writer.sweep_every, args=(interval, self._closing), name="semcache-sweep", daemon=True)
            self._sweeper.start()
        return self

    def close(self) -> None:
        """Stop background work and close every tier."""
        if self._state is State.CLOSED:
            return
        self._audits.close()
        if self._replicas is not None:
            self._replicas.stop()
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        self._core.chain.close()
        self._state = State.CLOSED

    def _ensure_open(self) -> None:
        if self._state is not State.OPEN:
            if self._state is State.CLOSED:
                raise ConfigurationError("this cache is closed")
            self.open()

    # -- what the cache is made of ---------------------------------------------------
    @property
    def timer(self) -> Callable[[], float]:
        """The clock every tier and TTL decision uses (settable, e.g. in tests)."""
        return self._core.timer

    @timer.setter
    def timer(self, timer: Callable[[], float]) -> None:
        self._core.timer = timer

    @property
    def embedder(self) -> Any:
        """The embedder, or ``None`` when semantic matching is off."""
        return self._core.embedder

    @property
    def verifier(self) -> Any:
        """The pair verifier of semantic hits (:class:`~semcache.verify.PairVerifier`), or ``None``."""
        return self._core.verifier

    @property
    def audits(self) -> Auditor:
        """The LLM audits of semantic hits (``Policy.audit_rate``, :mod:`semcache.audit`):
        ``audits.join(timeout)`` waits for those running, ``audits.sampler`` decides."""
        return self._audits

    @property
    def index(self) -> Any:
        """The vector index (:class:`~semcache.index.base.VectorIndex`), or ``None``."""
        return self._core.index

    @property
    def semantic(self) -> bool:
        """Whether the cache matches semantically at all (it has an embedder and an index)."""
        return self._core.index is not None

    @property
    def tiers(self) -> list[Any]:
        """The tier backends, top first."""
        return [s.backend for s in self._core.chain.slots]

    # -- pure helpers ---------------------------------------------------------------------
    def request(self, prompt: str | None = None, *, messages: Sequence[Any] | None = None, model: str | None = None, params: Mapping[str, Any] | None = None, namespace: str | None = None) -> Request:
        """Reduce a prompt or chat messages plus scope fields to a :class:`~semcache.keys.Request`."""
        return build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)

    def threshold_for(self, request: Request, threshold: Any = UNSET) -> float:
        """The similarity threshold for a request: per call, else per scope/namespace, else per cache."""
        return self._core.threshold_for(request, threshold)

    def embeddable(self, text: str) -> bool:
        """Whether ``text`` takes part in semantic matching (see ``Policy.long_prompt``)."""
        return self._core.embeddable(text)

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the cache's embedder, validated: ``(n, dim)`` unit rows."""
        self._ensure_open()
        return self._core.embed_many(list(texts))

    def count_saved_call(self, metadata: Mapping[str, Any] | None = None, *, model: str | None = None) -> None:
        """Count a call saved without a hit (it waited for an identical call), with its tokens and cost."""
        self._stats.inc("coalesced_calls")
        self._core.count_saved(metadata, model)

    # -- reads ------------------------------------------------------------------------------
    def get(self, prompt: str | None = None, *, messages: Sequence[Any] | None = None, model: str | None = None, params: Mapping[str, Any] | None = None, namespace: str | None = None, threshold: Any = UNSET, semantic: bool = True) -> Hit | None:
        """Look up a prompt or chat messages, exact first, then semantic; ``None`` on a miss
        (``InvalidInputError`` for an empty prompt, bad messages or a bad threshold)."""
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return self.lookup(req, threshold=threshold, semantic=semantic)

    def lookup(self, request: Request, *, threshold: Any = UNSET, semantic: bool = True, embedding: np.ndarray | None = None, exact: bool = True) -> Hit | None:
        """Look up a prepared request. ``embedding`` may be precomputed (it is checked);
        ``exact=False`` skips the exact path, for a caller that already ran :meth:`lookup_exact`."""
        if self._state is not State.OPEN:
            self._ensure_open()
        return self._reader.lookup(request, threshold=threshold, semantic=semantic, embedding=embedding, exact=exact)

    def lookup_exact(self, request: Request) -> Hit | None:
        """The exact path alone: L1 → L2 → L3 by key, promoting; never embeds, counts no miss."""
        self._ensure_open()
        return self._reader.exact(request, self.timer())

    def lookup_memory(self, request: Request) -> Hit | None:
        """An exact hit from L1 alone, never blocking; ``None`` is not a miss (nothing else was asked)."""
        return self._reader.lookup_memory(request) if self._state is State.OPEN else None

    def lookup_many(self, requests: Sequence[Request], *, thresholds: Sequence[Any] | None = None) -> list[LookupOutcome]:
        """Look up a batch with one embedding call for every request the exact path missed.
        One request's error is returned in its outcome; an embedder failure fails the batch."""
        self._ensure_open()
        return self._reader.lookup_many(requests, thresholds)

    def get_entry(self, key: str) -> Entry | None:
        """Return the live entry with id ``key`` from the first tier that has it."""
        self._ensure_open()
        found = self._reader.fetch(key, self.timer())
        return None if found is None else found[0]

    def explain(self, prompt: str | None = None, *, messages: Sequence[Any] | None = None, model: str | None = None, params: Mapping[str, Any] | None = None, namespace: str | None = None, threshold: Any = UNSET, k: int = 5) -> dict[str, Any]:
        """Explain the decision for a prompt: exact key, nearest candidates and checks. Read-only."""
        self._ensure_open()
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return self._reader.explain(req, self.threshold_for(req, threshold), k)

    def list_entries(self, selector: Selector | None = None, *, limit: int = 50, offset: int = 0) -> list[Entry]:
        """Live entries matching ``selector`` (``None``: all), newest first, one page, from
        L3, else L2 (``InvalidInputError`` with L1 only)."""
        from .admin import list_entries

        self._ensure_open()
        return list_entries(self, selector, self.timer(), limit=limit, offset=offset)

    def count(self, selector: Selector | None = None) -> int:
        """How many live entries ``selector`` matches (``None``: all); nothing is removed."""
        from .admin import count_matching

        self._ensure_open()
        return count_matching(self, selector or Selector.everything(), self.timer())

    # -- writes ---------------------------------------------------------------------------
    def set(self, prompt: str | None, value: Any, *, messages: Sequence[Any] | None = None, model: str | None = None, params: Mapping[str, Any] | None = None, namespace: str | None = None, ttl_seconds: Any = UNSET, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None) -> Entry:
        """Store ``value`` (bytes or JSON) under a prompt or chat messages in every tier and
        the index; ``ttl_seconds=None`` never expires. The returned entry's ``durable`` says
        whether a durable tier took it. ``InvalidInputError`` (``SerializationError``) for
        bad input, before anything is stored."""
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return self.store(req, value, ttl_seconds=ttl_seconds, tags=tags, metadata=metadata)

    def store(self, request: Request, value: Any, *, ttl_seconds: Any = UNSET, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None, embedding: np.ndarray | None = None) -> Entry:
        """Store a response for a prepared request (``embedding`` may be precomputed)."""
        self._ensure_open()
        return self._writer.store(request, value, ttl_seconds=ttl_seconds, tags=tags, metadata=metadata, embedding=embedding)

    def set_many(self, items: Iterable[Mapping[str, Any]], *, batch_size: int = 256) -> list[Entry]:
        """Store many items (mappings with ``value`` and ``prompt`` or ``messages``, plus
        the keywords of :meth:`set`), embedding in batches; one bad item stores nothing."""
        self._ensure_open()
        return self._writer.set_many(items, batch_size)

    def delete(self, key: str) -> bool:
        """Delete one entry by id from every tier and the index; return whether it existed."""
        return self.invalidate(keys=[key]) > 0

    def invalidate(self, *, key: str | None = None, keys: Sequence[str] = (), scope: str | None = None, namespace: str | None = None, model: str | None = None, tag: str | None = None, older_than_seconds: float | None = None, prompt_pattern: str | None = None) -> int:
        """Remove the entries matching every criterion given from every tier, the index and
        other replicas; return how many went (``InvalidInputError`` with none: see :meth:`flush`)."""
        sel = Selector.of(key=key, keys=keys, scope=scope, namespace=namespace, model=model, tag=tag, older_than_seconds=older_than_seconds, prompt_pattern=prompt_pattern)
        return self.invalidate_selector(sel)

    def flush(self) -> int:
        """Remove every entry from every tier and the index."""
        return self.invalidate_selector(Selector.everything())

    def invalidate_selector(self, selector: Selector) -> int:
        """Remove every entry ``selector`` matches; return how many distinct entries went."""
        self._ensure_open()
        return self._writer.invalidate(selector)

    def sweep(self) -> int:
        """Delete expired rows from L3 (and their vectors from the index); return how many."""
        self._ensure_open()
        return self._writer.sweep()

    # -- feedback ----------------------------------------------------------------------------
    def feedback(self, hit: Hit | None = None, correct: bool = False, *, prompt: str | None = None, messages: Sequence[Any] | None = None, entry_id: str | None = None, model: str | None = None, params: Mapping[str, Any] | None = None, namespace: str | None = None, source: str = "user") -> FeedbackResult:
        """Report whether a hit answered its request correctly; every report is kept as a
        labelled pair (:func:`semcache.feedback.load_labels`).

        Name the hit by the :class:`Hit` a lookup returned, with ``prompt=`` the prompt
        that was looked up (a semantic hit does not carry it; an exact hit does), or by
        ``entry_id=`` with the request as :meth:`get` took it (``prompt=`` or
        ``messages=``, ``model=``, ``params=``, ``namespace=``), which rebuilds its key.

        - ``correct=False`` on a **semantic** hit: that request (its normalised prompt in
          its scope) is never answered by that entry again, here and in every replica
          (pub/sub at once, the change log within ``Policy.log_poll_seconds``), and in
          replicas opened later. The next candidate may answer it, or it misses.
        - ``correct=False`` on an **exact** hit: the stored answer itself is wrong, so
          the entry is invalidated (like :meth:`invalidate`: every tier, the index,
          every replica).
        - ``correct=True``: only the label is kept.

        ``source`` is ``"user"`` or ``"llm"`` (a judge model). A tier outage never fails
        the call: the block applies here at once and the label waits in L2's hand-off
        (L3 down) or in this process (every tier down: lost if it crashes first; see
        :meth:`semcache.feedback.Feedback.report`); ``durable`` on the result says which.

        Raises:
            InvalidInputError: not a ``Hit``, both a hit and ``entry_id``, neither, an
                empty prompt, a NUL or lone surrogate, a request in another scope than
                the entry, a bad ``source`` or ``correct``.
            UnknownEntryError: ``entry_id`` names no live entry.
        """
        self._ensure_open()
        return self._feedback.report(hit, correct, prompt=prompt, messages=messages, entry_id=entry_id, model=model, params=params, namespace=namespace, source=source)

    # -- the index and replicas ------------------------------------------------------------
    def rebuild_index(self, *, reembed: bool = False, progress: bool | None = None) -> int:
        """Rebuild the in-process index from L3; return how many vectors it holds. With
        ``reembed``, entries with no (or another embedder's) vector are embedded again."""
        self._ensure_open()
        return self._reindexer.rebuild(reembed=reembed, progress=progress)

    def check_index(self) -> dict[str, Any]:
        """Compare the index with L3: counts, and keys missing on either side."""
        self._ensure_open()
        return self._reindexer.check()

    def apply_event(self, msg: Mapping[str, Any]) -> None:
        """Apply an invalidation or index update published by another replica."""
        self._ensure_open()
        assert self._replicas is not None
        self._replicas.apply_event(msg)

    def catch_up(self) -> None:
        """Apply now what the background poll would: other replicas' changes from L3's
        change log, the L2 repair, and the hand-off of what L3 missed."""
        self._ensure_open()
        assert self._replicas is not None
        self._replicas.tick()

    # -- stats and health ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits per tier and kind, misses, sets, evictions, tier errors, L1 bytes, index
        size, and ``feedback``: the reports received since open, with the estimated
        false-hit rate among the semantic hits that received feedback, and ``audits``:
        the semantic hits asked of the LLM again (:func:`semcache.stats.audit_report`)."""
        out = collect(self._core)
        out["feedback"]["blocked_pairs"] = self._feedback.blocked_pairs
        out["audits"]["running"] = self._audits.running
        return out

    def namespace_stats(self, namespace: str | None) -> dict[str, Any]:
        """One namespace's (a tenant's) counters since open: lookups, hits by kind, misses,
        hit rate, sets, invalidated, tokens and money saved (:func:`semcache.stats.namespace_report`).

        Counted in this process, like :meth:`stats`. The first
        :data:`~semcache.stats.MAX_TRACKED_NAMESPACES` namespaces seen are counted one by
        one; a later one reports ``"tracked": false`` and zeros.
        """
        tracked, c = self._core.tenants.get(namespace)
        return namespace_report(namespace, tracked, c)

    def namespace_rows(self, limit: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The first ``limit`` namespaces' :meth:`namespace_stats`, in the order first seen
        (a stable set: what bounds a per-tenant metric's labels), and the rest summed."""
        return namespace_rows(self._core.tenants, limit)

    def track_namespaces(self, namespaces: Sequence[str | None]) -> None:
        """Count these namespaces one by one first, in this order (a sidecar's tenants)."""
        self._core.tenants.register(namespaces)

    def health(self) -> dict[str, Any]:
        """Ping every tier: ``{"l1": "ok", "l2": "down: ...", "l3": "failed: ..."}``."""
        self._ensure_open()
        return dict(self._core.chain.health())

    # -- the decorator (semcache/decorator.py) ----------------------------------------------
    def cached(self, fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Cache a sync function that calls an LLM: ``@cache.cached`` or ``@cache.cached(...)``
        (options: :class:`~semcache.decorator.CachedFunction`)."""
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def wrap(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Return a cached version of an existing callable, e.g. ``client.chat.completions.create``."""
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def options(self, **kwargs: Any) -> Any:
        """Per-call controls for this cache's cached functions, as a ``with`` block
        (``bypass``, ``lookup``, ``store``, ``semantic``, ``ttl_seconds``, ``threshold``,
        ``tags``, ``namespace``: see :func:`semcache.decorator.options`)."""
        from .decorator import options

        return options(self, **kwargs)
