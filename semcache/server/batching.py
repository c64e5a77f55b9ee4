"""Micro-batching of concurrent semantic lookups: many requests, one embedding call.

An embedder answers a batch of 32 texts in far less than 32 times the cost of one
(the model runs once over a padded matrix), so under load the sidecar collects the
lookups that arrive within a short window (or until a batch is full), embeds them in
one call, then finishes each lookup with its precomputed vector — all of it the
cache's own batch lookup (:meth:`AsyncSemanticCache.lookup_many`), one worker-thread
hop per batch, off the event loop. While the configured number of batches is running, new
lookups keep queueing, so batches grow with load and throughput rises with it.

An exact hit in L1 is answered on the event loop before any of this: it never waits
for a window.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..async_cache import AsyncSemanticCache
from ..config import UNSET
from ..keys import Request
from ..types import Hit

__all__ = ["LookupResult", "MicroBatcher"]

log = logging.getLogger("semcache.server")


@dataclass(frozen=True, slots=True)
class LookupResult:
    """A lookup's hit (or ``None``) and the prompt's vector, reusable to store the answer."""

    hit: Hit | None
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class _Item:
    request: Request
    threshold: Any
    future: asyncio.Future[LookupResult]
    #: the caller's context: a batch runs in its first caller's (its trace's span)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class MicroBatcher:
    """Collects concurrent lookups and embeds them together.

    Args:
        cache: the open cache.
        window_seconds: how long the first lookup of a batch waits for company.
        max_batch: a batch is dispatched as soon as it has this many lookups.
        concurrency: batches in flight at once (each runs in its own worker thread).
        enabled: ``False`` sends every lookup through ``cache.lookup`` on its own
            (the comparison point for the load benchmark).
        on_batch: called with each batch's size (for metrics).
    """

    def __init__(
        self,
        cache: AsyncSemanticCache,
        *,
        window_seconds: float = 0.002,
        max_batch: int = 32,
        concurrency: int = 2,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.cache = cache
        self.window_seconds = window_seconds
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.enabled = enabled
        self.on_batch = on_batch
        self._pending: list[_Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def semantic(self) -> bool:
        """Whether the cache matches semantically at all."""
        return self.cache.semantic

    async def lookup(
        self, request: Request, *, threshold: Any = UNSET, semantic: bool = True
    ) -> LookupResult:
        """Look up a request: L1 exact on the loop, else through a batch (or alone when disabled).

        Raises:
            InvalidInputError: a bad threshold, or a prompt too long with ``long_prompt="error"``.
        """
        # an exact L1 hit costs microseconds; answer it here, without a thread hop or a window
        hit = self.cache.lookup_memory(request)
        if hit is not None:
            return LookupResult(hit)
        if not semantic or not self.semantic or not self.enabled:
            hit = await self.cache.lookup(request, threshold=threshold, semantic=semantic)
            return LookupResult(hit)
        loop = asyncio.get_running_loop()
        item = _Item(request, threshold, loop.create_future())
        self._pending.append(item)
        self._schedule(loop)
        return await item.future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._in_flight >= self.concurrency:
            return  # a finishing batch dispatches the queue
        if len(self._pending) >= self.max_batch or self.window_seconds <= 0:
            self._dispatch(loop)
        elif self._timer is None and self._pending:
            self._timer = loop.call_later(self.window_seconds, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._in_flight < self.concurrency and self._pending:
            self._dispatch(loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._in_flight += 1
        task = batch[0].context.run(loop.create_task, self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            results: list[LookupResult | BaseException]
            t0 = time.perf_counter()
            try:
                # exact paths first (they never pay for an embedding), then one embedding
                # call for every remaining embeddable text, then each semantic lookup;
                # one request's error comes back in its own outcome
                outcomes = await self.cache.lookup_many(
                    [i.request for i in batch], thresholds=[i.threshold for i in batch]
                )
            except Exception as exc:  # noqa: BLE001 - the whole batch failed (the embedder, say): tell every caller
                results = [exc] * len(batch)
            except BaseException:  # cancelled (shutdown): nobody gets an answer
                for item in batch:
                    item.future.cancel()
                raise
            else:
                log.debug(
                    "looked up a batch of %d in %.1f ms", len(batch), (time.perf_counter() - t0) * 1e3
                )
                results = [
                    o.error if o.error is not None else LookupResult(o.hit, o.embedding)
                    for o in outcomes
                ]
            for item, result in zip(batch, results):
                if item.future.done():  # the caller went away (client disconnect)
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._pending:
                loop = asyncio.get_running_loop()
                # the queue built up while this batch ran: send it now, it waited long enough
                if len(self._pending) >= self.max_batch or self._timer is None:
                    self._dispatch(loop)

    async def aclose(self) -> None:
        """Wait for the batches in flight (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            loop = asyncio.get_running_loop()
            while self._pending:
                self._dispatch(loop)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
