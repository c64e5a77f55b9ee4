"""What a read-through needs from a cache, as typing Protocols.

The decorator and the proxy are written against these, never against
:class:`~semcache.cache.SemanticCache` or :class:`~semcache.async_cache.AsyncSemanticCache`
themselves, so neither imports the core (the core imports the decorator). Both core
classes satisfy them structurally; so does any stand-in a test builds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..config import CacheConfig
from ..keys import Request
from ..types import Entry, Hit

__all__ = ["AsyncCache", "HasTiers", "SyncCache"]


class HasTiers(Protocol):
    """A cache whose tier backends can be listed (top first)."""

    @property
    def tiers(self) -> Sequence[Any]: ...


class SyncCache(HasTiers, Protocol):
    """The blocking cache API a sync read-through drives."""

    @property
    def config(self) -> CacheConfig: ...

    def lookup(self, request: Request, *, threshold: Any = ..., semantic: bool = ...) -> Hit | None: ...

    def store(
        self,
        request: Request,
        value: Any,
        *,
        ttl_seconds: Any = ...,
        tags: Iterable[str] = ...,
        metadata: Mapping[str, Any] | None = ...,
        embedding: Any = ...,
    ) -> Entry: ...

    def get_entry(self, key: str) -> Entry | None: ...

    def count_saved_call(self, metadata: Mapping[str, Any] | None = ..., *, model: str | None = ...) -> None: ...

    def options(self, **kwargs: Any) -> AbstractContextManager[Any]: ...


class AsyncCache(HasTiers, Protocol):
    """The awaitable cache API an async read-through drives (no worker-thread reach-ins)."""

    @property
    def config(self) -> CacheConfig: ...

    async def lookup(self, request: Request, *, threshold: Any = ..., semantic: bool = ...) -> Hit | None: ...

    async def store(
        self,
        request: Request,
        value: Any,
        *,
        ttl_seconds: Any = ...,
        tags: Iterable[str] = ...,
        metadata: Mapping[str, Any] | None = ...,
        embedding: Any = ...,
    ) -> Entry: ...

    async def get_entry(self, key: str) -> Entry | None: ...

    def count_saved_call(self, metadata: Mapping[str, Any] | None = ..., *, model: str | None = ...) -> None: ...

    def options(self, **kwargs: Any) -> AbstractContextManager[Any]: ...
