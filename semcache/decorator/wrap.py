"""Wrapping a function: pick the driver for the cache, and build the wrapper."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from .aio import AsyncCachedFunction
from .base import CachedFunction
from .sync import SyncCachedFunction

__all__ = ["cached_function", "make_cached"]


def _is_async_cache(cache: Any) -> bool:
    # an AsyncSemanticCache (or any cache whose lookup is awaitable), told apart by
    # its API rather than its class, so this package never imports the core
    return inspect.iscoroutinefunction(getattr(cache, "lookup", None))


def cached_function(cache: Any, fn: Callable[..., Any], **config: Any) -> CachedFunction[Any]:
    """The driver for ``fn`` on ``cache``: :class:`AsyncCachedFunction` or :class:`SyncCachedFunction`.

    Raises:
        ConfigurationError: see :class:`CachedFunction`.
    """
    if _is_async_cache(cache):
        return AsyncCachedFunction(cache, fn, **config)
    return SyncCachedFunction(cache, fn, **config)


def make_cached(cache: Any, fn: Callable[..., Any] | None = None, **config: Any) -> Any:
    """Build the decorator for ``cache``: ``make_cached(cache, fn, ...)`` wraps now; without ``fn``, later.

    See :class:`CachedFunction` for the keywords.
    """
    if fn is None:
        return lambda f: make_cached(cache, f, **config)
    logic = cached_function(cache, fn, **config)
    wrapper: Any
    if isinstance(logic, AsyncCachedFunction):
        alogic = logic
        if logic.is_asyncgen:

            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                stream = await alogic.acall(args, kwargs)
                try:
                    async for item in stream:
                        yield item
                finally:
                    closer = getattr(stream, "aclose", None)
                    if closer is not None:
                        await closer()

            wrapper = agen_wrapper
        else:

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await alogic.acall(args, kwargs)

            wrapper = async_wrapper
    else:
        assert isinstance(logic, SyncCachedFunction)
        slogic = logic

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return slogic.call(args, kwargs)

        wrapper = sync_wrapper
    wrapper.cache_logic = logic
    wrapper.cache_request = lambda *a, **k: logic.request(a, k)
    return wrapper
