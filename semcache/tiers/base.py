"""The storage tier protocol: one narrow interface for L1, L2 and L3.

A tier stores :class:`~semcache.types.Entry` objects by key and honours each entry's
``expires_at``, capped by its own ``max_ttl_seconds``. Times are passed in (``now``)
so that one injectable clock drives every tier. Drivers' exceptions are translated
to :class:`~semcache.errors.BackendError` at this boundary.

"Implements the protocol" means "passes the contract suite" in ``tests/contract``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..types import Entry, Selector

__all__ = ["AsyncBackend", "Backend", "ThreadedAsyncBackend", "tier_expiry"]


@runtime_checkable
class Backend(Protocol):
    """A synchronous storage tier."""

    name: str
    max_ttl_seconds: float | None

    def get(self, key: str, now: float) -> Entry | None:
        """Return the live entry stored under ``key``, or ``None``."""
        ...

    def set(self, entry: Entry, now: float) -> None:
        """Store ``entry`` until its ``expires_at`` (capped by the tier's max TTL)."""
        ...

    def delete(self, keys: Sequence[str]) -> int:
        """Delete entries by key; return how many existed."""
        ...

    def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete every entry ``selector`` matches; return their keys."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return counters and sizes for this tier."""
        ...

    def close(self) -> None:
        """Release connections and memory."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """An asynchronous storage tier (same methods, awaitable; ``aclose`` closes)."""

    name: str
    max_ttl_seconds: float | None

    async def get(self, key: str, now: float) -> Entry | None:
        """Return the live entry stored under ``key``, or ``None``."""
        ...

    async def set(self, entry: Entry, now: float) -> None:
        """Store ``entry`` until its ``expires_at`` (capped by the tier's max TTL)."""
        ...

    async def delete(self, keys: Sequence[str]) -> int:
        """Delete entries by key; return how many existed."""
        ...

    async def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete every entry ``selector`` matches; return their keys."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return counters and sizes for this tier."""
        ...

    async def aclose(self) -> None:
        """Release connections and memory."""
        ...


def tier_expiry(entry: Entry, now: float, max_ttl_seconds: float | None) -> float | None:
    """The time a tier keeps ``entry`` until: its ``expires_at``, capped by the tier's max TTL.

    Promotion copies an entry with its *remaining* life, so this never extends it.
    """
    if max_ttl_seconds is None:
        return entry.expires_at
    cap = now + max_ttl_seconds
    return cap if entry.expires_at is None else min(entry.expires_at, cap)


class ThreadedAsyncBackend:
    """Any :class:`Backend` as an :class:`AsyncBackend`.

    Blocking tiers (Redis, SQL) run in a worker thread through ``anyio.to_thread``
    so the event loop never waits on I/O; a tier that declares ``blocking = False``
    (L1 memory) is called inline, since a thread hop would cost more than the call.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.max_ttl_seconds = backend.max_ttl_seconds
        self._inline = getattr(backend, "blocking", True) is False

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._inline:
            return fn(*args)
        import anyio

        return await anyio.to_thread.run_sync(fn, *args)

    async def get(self, key: str, now: float) -> Entry | None:
        """Return the live entry stored under ``key``, or ``None``."""
        return await self._run(self.backend.get, key, now)  # type: ignore[no-any-return]

    async def set(self, entry: Entry, now: float) -> None:
        """Store ``entry`` until its (capped) expiry."""
        await self._run(self.backend.set, entry, now)

    async def delete(self, keys: Sequence[str]) -> int:
        """Delete entries by key; return how many existed."""
        return await self._run(self.backend.delete, keys)  # type: ignore[no-any-return]

    async def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete every entry ``selector`` matches; return their keys."""
        return await self._run(self.backend.invalidate, selector, now)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """The wrapped tier's stats."""
        return self.backend.stats()

    async def aclose(self) -> None:
        """Close the wrapped tier."""
        await self._run(self.backend.close)
