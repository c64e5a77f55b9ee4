"""The asynchronous facade: :class:`AsyncSemanticCache`.

Every public method of :class:`~semcache.cache.SemanticCache` is here with the same
typed signature, awaitable where it may block. Blocking work (Redis, SQL,
embedding, FAISS) runs in a worker thread through ``anyio.to_thread``; an exact hit
in L1 is answered on the event loop without a thread hop (:meth:`lookup_memory`).
Callers never need the synchronous cache underneath.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from .cache import SemanticCache
from .config import UNSET, CacheConfig
from .feedback import FeedbackResult
from .keys import Request, build_request
from .types import Entry, Hit, LookupOutcome, Selector

__all__ = ["AsyncSemanticCache"]

T = TypeVar("T")


class AsyncSemanticCache:
    """The asynchronous facade: the same methods as :class:`SemanticCache`, awaitable.

    Use ``async with`` or ``await open()`` / ``await aclose()``. Constructor arguments
    are those of :class:`SemanticCache`.
    """

    def __init__(self, config: CacheConfig | None = None, **kwargs: Any) -> None:
        self._cache = SemanticCache(config, **kwargs)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        import anyio

        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # -- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> AsyncSemanticCache:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def sync(self) -> SemanticCache:
        """The synchronous cache this facade drives (for code that runs in a worker thread)."""
        return self._cache

    @property
    def config(self) -> CacheConfig:
        """The cache's configuration."""
        return self._cache.config

    @property
    def state(self) -> str:
        """``new``, ``open`` or ``closed``."""
        return self._cache.state

    @property
    def timer(self) -> Callable[[], float]:
        """The clock the cache uses."""
        return self._cache.timer

    @property
    def embedder(self) -> Any:
        """The embedder, or ``None`` when semantic matching is off."""
        return self._cache.embedder

    @property
    def verifier(self) -> Any:
        """The pair verifier of semantic hits, or ``None``."""
        return self._cache.verifier

    @property
    def audits(self) -> Any:
        """The LLM audits of semantic hits (:class:`~semcache.audit.Auditor`):
        ``await audits.ajoin(timeout)`` waits for those running."""
        return self._cache.audits

    @property
    def index(self) -> Any:
        """The vector index (:class:`~semcache.index.base.VectorIndex`), or ``None``."""
        return self._cache.index

    @property
    def semantic(self) -> bool:
        """Whether the cache matches semantically at all."""
        return self._cache.semantic

    @property
    def tiers(self) -> list[Any]:
        """The tier backends, top first."""
        return self._cache.tiers

    async def open(self) -> AsyncSemanticCache:
        """Open the cache (connect, check the schema, rebuild the index) off the event loop."""
        await self._run(self._cache.open)
        return self

    async def aclose(self) -> None:
        """Close the cache."""
        await self._run(self._cache.close)

    # -- pure helpers ------------------------------------------------------------
    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> Request:
        """Same as :meth:`SemanticCache.request` (pure, no I/O)."""
        return build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)

    def threshold_for(self, request: Request, threshold: Any = UNSET) -> float:
        """Same as :meth:`SemanticCache.threshold_for` (pure)."""
        return self._cache.threshold_for(request, threshold)

    def embeddable(self, text: str) -> bool:
        """Same as :meth:`SemanticCache.embeddable` (counts tokens, no I/O)."""
        return self._cache.embeddable(text)

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Async twin of :meth:`SemanticCache.embed_many`."""
        return await self._run(self._cache.embed_many, list(texts))

    def count_saved_call(self, metadata: Mapping[str, Any] | None = None, *, model: str | None = None) -> None:
        """Same as :meth:`SemanticCache.count_saved_call` (no I/O)."""
        self._cache.count_saved_call(metadata, model=model)

    def stats(self) -> dict[str, Any]:
        """Same as :meth:`SemanticCache.stats` (no I/O)."""
        return self._cache.stats()

    def namespace_stats(self, namespace: str | None) -> dict[str, Any]:
        """Same as :meth:`SemanticCache.namespace_stats` (no I/O)."""
        return self._cache.namespace_stats(namespace)

    def namespace_rows(self, limit: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Same as :meth:`SemanticCache.namespace_rows` (no I/O)."""
        return self._cache.namespace_rows(limit)

    def track_namespaces(self, namespaces: Sequence[str | None]) -> None:
        """Same as :meth:`SemanticCache.track_namespaces` (no I/O)."""
        self._cache.track_namespaces(namespaces)

    # -- reads -----------------------------------------------------------------
    def lookup_memory(self, request: Request) -> Hit | None:
        """An exact hit from L1, answered on the event loop without a thread hop; else ``None``.

        Never blocks: it reads only process memory. A ``None`` is not a miss — the
        other tiers and the index have not been asked (use :meth:`lookup`).
        """
        return self._cache.lookup_memory(request)

    async def get(
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
        """Async twin of :meth:`SemanticCache.get`."""
        req = build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)
        return await self.lookup(req, threshold=threshold, semantic=semantic)

    async def lookup(
        self,
        request: Request,
        *,
        threshold: Any = UNSET,
        semantic: bool = True,
        embedding: np.ndarray | None = None,
        exact: bool = True,
    ) -> Hit | None:
        """Async twin of :meth:`SemanticCache.lookup`."""
        if exact:
            hit = self.lookup_memory(request)
            if hit is not None:
                return hit
        return await self._run(
            self._cache.lookup, request, threshold=threshold, semantic=semantic, embedding=embedding, exact=exact
        )

    async def lookup_exact(self, request: Request) -> Hit | None:
        """Async twin of :meth:`SemanticCache.lookup_exact`."""
        hit = self.lookup_memory(request)
        if hit is not None:
            return hit
        return await self._run(self._cache.lookup_exact, request)

    async def lookup_many(
        self, requests: Sequence[Request], *, thresholds: Sequence[Any] | None = None
    ) -> list[LookupOutcome]:
        """Async twin of :meth:`SemanticCache.lookup_many` (one worker-thread hop per batch)."""
        return await self._run(self._cache.lookup_many, list(requests), thresholds=thresholds)

    async def get_entry(self, key: str) -> Entry | None:
        """Async twin of :meth:`SemanticCache.get_entry`."""
        return await self._run(self._cache.get_entry, key)

    async def explain(
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
        """Async twin of :meth:`SemanticCache.explain`."""
        return await self._run(
            self._cache.explain,
            prompt,
            messages=messages,
            model=model,
            params=params,
            namespace=namespace,
            threshold=threshold,
            k=k,
        )

    async def list_entries(
        self, selector: Selector | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[Entry]:
        """Async twin of :meth:`SemanticCache.list_entries`."""
        return await self._run(self._cache.list_entries, selector, limit=limit, offset=offset)

    async def count(self, selector: Selector | None = None) -> int:
        """Async twin of :meth:`SemanticCache.count`."""
        return await self._run(self._cache.count, selector)

    # -- writes ------------------------------------------------------------------
    async def set(
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
        """Async twin of :meth:`SemanticCache.set`."""
        return await self._run(
            self._cache.set,
            prompt,
            value,
            messages=messages,
            model=model,
            params=params,
            namespace=namespace,
            ttl_seconds=ttl_seconds,
            tags=list(tags),
            metadata=metadata,
        )

    async def store(
        self,
        request: Request,
        value: Any,
        *,
        ttl_seconds: Any = UNSET,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        embedding: np.ndarray | None = None,
    ) -> Entry:
        """Async twin of :meth:`SemanticCache.store`."""
        return await self._run(
            self._cache.store,
            request,
            value,
            ttl_seconds=ttl_seconds,
            tags=list(tags),
            metadata=metadata,
            embedding=embedding,
        )

    async def set_many(self, items: Iterable[Mapping[str, Any]], *, batch_size: int = 256) -> list[Entry]:
        """Async twin of :meth:`SemanticCache.set_many`."""
        return await self._run(self._cache.set_many, list(items), batch_size=batch_size)

    async def delete(self, key: str) -> bool:
        """Async twin of :meth:`SemanticCache.delete`."""
        return await self._run(self._cache.delete, key)

    async def invalidate(
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
        """Async twin of :meth:`SemanticCache.invalidate`."""
        return await self._run(
            self._cache.invalidate,
            key=key,
            keys=list(keys),
            scope=scope,
            namespace=namespace,
            model=model,
            tag=tag,
            older_than_seconds=older_than_seconds,
            prompt_pattern=prompt_pattern,
        )

    async def invalidate_selector(self, selector: Selector) -> int:
        """Async twin of :meth:`SemanticCache.invalidate_selector`."""
        return await self._run(self._cache.invalidate_selector, selector)

    async def flush(self) -> int:
        """Async twin of :meth:`SemanticCache.flush`."""
        return await self._run(self._cache.flush)

    async def sweep(self) -> int:
        """Async twin of :meth:`SemanticCache.sweep`."""
        return await self._run(self._cache.sweep)

    # -- feedback ----------------------------------------------------------------------
    async def feedback(
        self,
        hit: Hit | None = None,
        correct: bool = False,
        *,
        prompt: str | None = None,
        messages: Sequence[Any] | None = None,
        entry_id: str | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        source: str = "user",
    ) -> FeedbackResult:
        """Async twin of :meth:`SemanticCache.feedback`."""
        return await self._run(
            self._cache.feedback,
            hit,
            correct,
            prompt=prompt,
            messages=messages,
            entry_id=entry_id,
            model=model,
            params=params,
            namespace=namespace,
            source=source,
        )

    # -- the index and health ------------------------------------------------------
    async def rebuild_index(self, *, reembed: bool = False, progress: bool | None = None) -> int:
        """Async twin of :meth:`SemanticCache.rebuild_index`."""
        return await self._run(self._cache.rebuild_index, reembed=reembed, progress=progress)

    async def check_index(self) -> dict[str, Any]:
        """Async twin of :meth:`SemanticCache.check_index`."""
        return await self._run(self._cache.check_index)

    async def apply_event(self, msg: Mapping[str, Any]) -> None:
        """Async twin of :meth:`SemanticCache.apply_event`."""
        await self._run(self._cache.apply_event, msg)

    async def catch_up(self) -> None:
        """Async twin of :meth:`SemanticCache.catch_up`."""
        await self._run(self._cache.catch_up)

    async def health(self) -> dict[str, Any]:
        """Async twin of :meth:`SemanticCache.health`."""
        return await self._run(self._cache.health)

    # -- the decorator ---------------------------------------------------------------
    def cached(self, fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Cache an async function (or async generator) that calls an LLM; see :meth:`SemanticCache.cached`.

        Raises:
            ConfigurationError: ``fn`` is not async, or its prompt cannot be read.
        """
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def wrap(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Return a cached version of an existing async callable (``AsyncOpenAI().chat.completions.create``)."""
        from .decorator import make_cached

        return make_cached(self, fn, **kwargs)

    def options(self, **kwargs: Any) -> Any:
        """Per-call controls for this cache's cached functions (see :meth:`SemanticCache.options`)."""
        from .decorator import options

        return options(self._cache, **kwargs)
