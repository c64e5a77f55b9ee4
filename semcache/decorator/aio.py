"""The async driver: a decorated coroutine (or async generator) function, on an :class:`~semcache.AsyncSemanticCache`.

Every cache call is one of the facade's awaitable methods (``lookup``, ``store``,
``get_entry``): blocking tier work never runs on the event loop. An async function
that returns a *sync* iterator completes it inside ``next()``, where nothing can be
awaited: its store and lock release then run as a task on the loop
(:meth:`~semcache.readthrough.AsyncLead.finish_soon`; :meth:`AsyncCachedFunction.drain`
waits for them).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ..errors import ConfigurationError
from ..keys import Request
from ..readthrough import AsyncCache, AsyncLead, AsyncReadThrough, OwnCall, async_redis_lock
from ..singleflight import AsyncRedisLock, RedisLock
from ..streaming import AsyncRecordingStream, RecordingStream, is_stream
from .base import OTHER_FORM, CachedFunction, Shared, snapshot
from .options import CallOptions

__all__ = ["AsyncCachedFunction"]

log = logging.getLogger("semcache")


class AsyncCachedFunction(CachedFunction[AsyncCache]):
    """A decorated async function: the awaitable twin of :class:`~semcache.decorator.sync.SyncCachedFunction`."""

    is_async = True

    def __init__(self, cache: AsyncCache, fn: Any, **config: Any) -> None:
        super().__init__(cache, fn, **config)
        spec = self.lock_spec
        self._lock: AsyncRedisLock | None = None
        if isinstance(spec, AsyncRedisLock):
            self._lock = spec
        elif isinstance(spec, RedisLock):  # a sync client: its commands run in a worker thread
            self._lock = AsyncRedisLock(
                spec.client,
                prefix=spec.prefix,
                timeout_seconds=spec.timeout_seconds,
                poll_interval_seconds=spec.poll_interval_seconds,
            )
        self.readthrough: AsyncReadThrough[Shared] = AsyncReadThrough(
            self.flights,
            lock=self._get_lock,
            wait_seconds=self.wait_seconds,
            lock_wait_seconds=self.lock_timeout_seconds,
            name=self.name,
        )

    def _get_lock(self) -> AsyncRedisLock | None:
        if self._lock is None and self.lock_spec is True:
            self._lock = async_redis_lock(self.cache, timeout_seconds=self.lock_timeout_seconds)
            if self._lock is None:
                raise ConfigurationError("lock=True needs Redis as L2; open the cache first")
        return self._lock

    async def drain(self) -> None:
        """Wait for stores (and lock releases) still running after a sync stream ended."""
        await self.readthrough.drain()

    async def acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a call of the wrapped function through the cache."""
        opts, req, want_stream = self.prepare(args, kwargs)
        if req is None:
            return await self._invoke(args, kwargs)
        if opts.lookup:
            hit = await self.cache.lookup(req, **self.lookup_kwargs(opts))
            if hit is not None:
                out = self.decode(hit.value, hit.entry.metadata, want_stream)
                # the other, unconvertible form is a miss that is not stored
                if out is OTHER_FORM:
                    return await self._invoke(args, kwargs)
                self._audit(hit, req, args, kwargs)
                return out

        async def follow(shared: Shared) -> Any | OwnCall:
            out = self.from_shared(shared, want_stream)
            return await self._invoke(args, kwargs) if out is OTHER_FORM else out

        async def recheck() -> Shared | None:
            return self.entry_shared(await self.cache.get_entry(req.key), req)

        async def lead(duty: AsyncLead[Shared]) -> Any:
            return await self._lead(duty, req, opts, args, kwargs)

        return await self.readthrough.run(
            req.key,
            lead=lead,
            follow=follow,
            recheck=recheck,
            single_flight=self.single_flight,
            use_lock=bool(self.lock_spec),
        )

    def _audit(self, hit: Any, req: Request, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Maybe ask the LLM again in a background task (``Policy.audit_rate``); never raises."""
        audits = self.auditor(hit)
        if audits is None:
            return
        try:
            cached = self.cached_text(hit)
            a, k = snapshot(args), snapshot(kwargs)
            audits.submit_async(hit, req, lambda: self._fresh(a, k), cached)
        except Exception as exc:  # noqa: BLE001 - the caller's answer comes first
            log.warning("%s: could not start an audit (%s)", self.name, exc)

    async def _fresh(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Call the function again (an audit's task): the text of its answer. A stream
        is read to its end here (a sync one in a worker thread), and assembled."""
        result = await self._invoke(args, kwargs)
        kind = is_stream(result)
        if kind is None:
            return self.fresh_text(result, stream=False)
        if kind == "async":
            try:
                items = [item async for item in result]
            finally:
                closer = getattr(result, "aclose", None)
                if closer is not None:
                    await closer()
        else:
            items = await asyncio.to_thread(_drain, result)
        return self.fresh_text(items, stream=True)

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = self.fn(*args, **kwargs)
        # an async generator function returns its stream without being awaited
        return await result if inspect.isawaitable(result) else result

    async def _lead(
        self, duty: AsyncLead[Shared], req: Request, opts: CallOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await self._invoke(args, kwargs)

        # A stream is stored once it is exhausted, a plain result at once.
        async def settle(value: Any, *, stream: bool) -> None:
            shared = None
            try:
                shared = await self._finish(req, opts, value, stream=stream)
            finally:
                await duty.finish(shared)

        kind = is_stream(result)
        if kind is None:
            await settle(result, stream=False)
            return result
        if kind == "async":
            return AsyncRecordingStream(
                result, on_complete=lambda items: settle(items, stream=True), on_abandon=duty.drop
            )

        def done(items: list[Any]) -> None:
            # a sync iterator read to its end inside next(): store and release on the loop
            duty.finish_soon(lambda: self._finish(req, opts, items, stream=True))

        return RecordingStream(result, on_complete=done, on_abandon=duty.drop)

    async def _finish(self, req: Request, opts: CallOptions, value: Any, *, stream: bool) -> Shared:
        shared, stored, meta = self.to_store(opts, value, stream=stream)
        if meta is not None:
            try:
                await self.cache.store(req, stored, **self.store_kwargs(opts, meta))
            except Exception as exc:  # noqa: BLE001 - a tier outage must never fail a working call
                log.warning("%s: could not store the response (%s)", self.name, exc)
        return shared


def _drain(stream: Any) -> list[Any]:
    """Every item of a sync stream, closed after (in an audit's worker thread)."""
    try:
        return list(stream)
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
