"""The sync driver: a decorated function called from a thread, on a :class:`~semcache.SemanticCache`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import ConfigurationError
from ..keys import Request
from ..readthrough import Lead, ReadThrough, SyncCache, redis_lock
from ..singleflight import AsyncRedisLock, RedisLock
from ..streaming import AsyncRecordingStream, RecordingStream, is_stream
from .base import OTHER_FORM, CachedFunction, Shared, snapshot
from .options import CallOptions

__all__ = ["SyncCachedFunction"]

log = logging.getLogger("semcache")


class SyncCachedFunction(CachedFunction[SyncCache]):
    """A decorated sync function: look up, else lead or follow the call, and store (see :class:`CachedFunction`)."""

    is_async = False

    def __init__(self, cache: SyncCache, fn: Any, **config: Any) -> None:
        super().__init__(cache, fn, **config)
        if isinstance(self.lock_spec, AsyncRedisLock):
            raise ConfigurationError("a sync function needs a RedisLock, not an AsyncRedisLock")
        self._lock: RedisLock | None = self.lock_spec if isinstance(self.lock_spec, RedisLock) else None
        self.readthrough: ReadThrough[Shared] = ReadThrough(
            self.flights,
            lock=self._get_lock,
            wait_seconds=self.wait_seconds,
            lock_wait_seconds=self.lock_timeout_seconds,
            name=self.name,
        )

    def _get_lock(self) -> RedisLock | None:
        if self._lock is None and self.lock_spec is True:
            self._lock = redis_lock(self.cache, timeout_seconds=self.lock_timeout_seconds)
            if self._lock is None:
                raise ConfigurationError("lock=True needs Redis as L2; open the cache first")
        return self._lock

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a call of the wrapped function through the cache."""
        opts, req, want_stream = self.prepare(args, kwargs)
        if req is None:
            return self.fn(*args, **kwargs)
        if opts.lookup:
            hit = self.cache.lookup(req, **self.lookup_kwargs(opts))
            if hit is not None:
                out = self.decode(hit.value, hit.entry.metadata, want_stream)
                # stored in the other form (stream or not) and not convertible: a miss
                # that is not stored, so the stored form stays
                if out is OTHER_FORM:
                    return self.fn(*args, **kwargs)
                self._audit(hit, req, args, kwargs)
                return out

        def follow(shared: Shared) -> Any:
            out = self.from_shared(shared, want_stream)
            return self.fn(*args, **kwargs) if out is OTHER_FORM else out

        return self.readthrough.run(
            req.key,
            lead=lambda duty: self._lead(duty, req, opts, args, kwargs),
            follow=follow,
            recheck=lambda: self.entry_shared(self.cache.get_entry(req.key), req),
            single_flight=self.single_flight,
            use_lock=bool(self.lock_spec),
        )

    def _audit(self, hit: Any, req: Request, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Maybe ask the LLM again in the background (``Policy.audit_rate``); never raises."""
        audits = self.auditor(hit)
        if audits is None:
            return
        try:
            cached = self.cached_text(hit)
            a, k = snapshot(args), snapshot(kwargs)
            audits.submit(hit, req, lambda: self._fresh(a, k), cached)
        except Exception as exc:  # noqa: BLE001 - the caller's answer comes first
            log.warning("%s: could not start an audit (%s)", self.name, exc)

    def _fresh(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Call the function again (an audit's worker thread): the text of its answer.
        A stream is read to its end here, and assembled."""
        result = self.fn(*args, **kwargs)
        kind = is_stream(result)
        if kind is None:
            return self.fresh_text(result, stream=False)
        if kind == "sync":
            try:
                items = list(result)
            finally:
                close = getattr(result, "close", None)
                if callable(close):
                    close()
        else:
            items = asyncio.run(_collect(result))
        return self.fresh_text(items, stream=True)

    def _lead(
        self, duty: Lead[Shared], req: Request, opts: CallOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = self.fn(*args, **kwargs)

        # A stream is stored once it is exhausted, a plain result at once.
        def settle(value: Any, *, stream: bool) -> None:
            shared = None
            try:
                shared = self._finish(req, opts, value, stream=stream)
            finally:
                duty.finish(shared)

        kind = is_stream(result)
        if kind is None:
            settle(result, stream=False)
            return result
        proxy = RecordingStream if kind == "sync" else AsyncRecordingStream
        return proxy(result, on_complete=lambda items: settle(items, stream=True), on_abandon=duty.drop)

    def _finish(self, req: Request, opts: CallOptions, value: Any, *, stream: bool) -> Shared:
        shared, stored, meta = self.to_store(opts, value, stream=stream)
        if meta is not None:
            try:
                self.cache.store(req, stored, **self.store_kwargs(opts, meta))
            except Exception as exc:  # noqa: BLE001 - a tier outage must never fail a working call
                log.warning("%s: could not store the response (%s)", self.name, exc)
        return shared


async def _collect(stream: Any) -> list[Any]:
    """Every item of an async stream a sync function returned (read in an audit's thread)."""
    try:
        return [item async for item in stream]
    finally:
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
