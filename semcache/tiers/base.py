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

__all__ = ["AsyncBackend", "Backend", "tier_expiry"]


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
