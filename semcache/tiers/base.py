"""The storage tier protocol: one narrow interface for L1, L2 and L3.

A tier stores :class:`~semcache.types.Entry` objects by key and honours each entry's
``expires_at``, capped by its own ``max_ttl_seconds``. Times are passed in (``now``)
so that one injectable clock drives every tier. Drivers' exceptions are translated
to :class:`~semcache.errors.BackendError` at this boundary.

"Implements the protocol" means "passes the contract suite" in ``tests/contract``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from ..types import Entry, Selector

__all__ = [
    "AsyncBackend",
    "Backend",
    "ChangeLog",
    "EmbeddingStore",
    "Handoff",
    "Listable",
    "Openable",
    "Pingable",
    "ProcessMemory",
    "Publisher",
    "Scannable",
    "StreamLog",
    "Sweepable",
    "Touchable",
    "ThreadedAsyncBackend",
    "Tombstones",
    "tier_expiry",
]


@runtime_checkable
class Backend(Protocol):
    """A synchronous storage tier."""

    name: str
    max_ttl_seconds: float | None

    def get(self, key: str, now: float) -> Entry | None:
        """Return the live entry stored under ``key``, or ``None``."""
        ...

    def set(self, entry: Entry, now: float, *, token: int | None = None) -> bool:
        """Store ``entry`` until its ``expires_at`` (capped by the tier's max TTL),
        unless the tier holds a newer version or delete of its key (``token``: a read
        token of L1's, for promotions). Return whether it was stored."""
        ...

    def set_many(self, entries: Sequence[Entry], now: float) -> Any:
        """Store many entries (versioned like :meth:`set`)."""
        ...

    def delete(self, keys: Sequence[str], version: int | None = None) -> int:
        """Delete entries by key (with ``version``: those older, leaving tombstones);
        return how many existed."""
        ...

    def invalidate(self, selector: Selector, now: float, version: int | None = None) -> list[str]:
        """Delete every entry ``selector`` matches (older than ``version``); return their keys."""
        ...

    def stats(self) -> dict[str, Any]:
        """Return counters and sizes for this tier."""
        ...

    def close(self) -> None:
        """Release connections and memory."""
        ...


# -- roles: what a tier can do beyond the protocol, checked by mypy --------------------
# The cache finds a tier's roles with isinstance() on these protocols, never by name.


@runtime_checkable
class Listable(Protocol):
    """A tier that can list and count what it holds (L3; the CLI and API pages)."""

    def list_entries(self, selector: Selector | None, now: float, *, limit: int = 50, offset: int = 0) -> list[Entry]:
        """Live entries, newest first, filtered by ``selector``."""
        ...

    def select_keys(self, selector: Selector, now: float, below: int | None = None) -> list[str]:
        """Keys ``selector`` matches, without deleting."""
        ...

    def count(self, now: float | None = None, embedder_id: str | None = None) -> int:
        """How many entries (live ones when ``now`` is given)."""
        ...


@runtime_checkable
class ProcessMemory(Protocol):
    """L1: a tier in this process's memory, with read tokens for safe promotion."""

    def mark(self) -> int:
        """A read token (see :meth:`semcache.tiers.memory.MemoryBackend.mark`)."""
        ...

    def clear(self) -> None:
        """Drop everything, refusing copies from lookups in flight."""
        ...

    def get(self, key: str, now: float) -> Entry | None:
        """The live entry under ``key``."""
        ...

    def delete(self, keys: Sequence[str], version: int | None = None) -> int:
        """Delete entries (older than ``version``)."""
        ...

    def invalidate(self, selector: Selector, now: float, version: int | None = None) -> list[str]:
        """Delete matching entries (older than ``version``)."""
        ...


@runtime_checkable
class Tombstones(Protocol):
    """A tier whose reads tell a deleted key from a missing one."""

    def read(self, key: str, now: float) -> Entry | int | None:
        """The live entry, the version of the delete that removed it, or ``None``."""
        ...


@runtime_checkable
class Openable(Protocol):
    """A tier that connects (and checks its schema) before use."""

    def open(self) -> None:
        """Connect; raise :class:`~semcache.errors.BackendError` when it cannot."""
        ...


@runtime_checkable
class Pingable(Protocol):
    """A tier that can say whether it is healthy."""

    def ping(self) -> bool:
        """Check the tier; raise :class:`~semcache.errors.BackendError` when it is not well."""
        ...


@runtime_checkable
class Touchable(Protocol):
    """A tier that can move an entry's expiry without rewriting it (L3: it keeps the vector)."""

    def touch(self, key: str, expires_at: float | None, now: float) -> None:
        """Move the expiry of ``key``."""
        ...


@runtime_checkable
class Scannable(Protocol):
    """A tier that can walk every entry it holds (L2: a SCAN, for listing without L3)."""

    def iter_entries(self) -> Iterator[Entry]:
        """Every decodable entry."""
        ...


@runtime_checkable
class Sweepable(Protocol):
    """A tier whose expired rows must be deleted by a sweep (L3)."""

    def sweep(self, now: float) -> list[str]:
        """Delete expired rows; return their keys."""
        ...


@runtime_checkable
class EmbeddingStore(Protocol):
    """A tier that keeps embeddings with entries, so the index can be rebuilt (L3)."""

    stores_embeddings: bool

    def iter_embeddings(self, embedder_id: str, now: float, batch: int = 5000) -> Iterator[list[tuple[str, str, bytes]]]:
        """Batches of ``(key, scope, embedding)``."""
        ...

    def set_embedding(self, key: str, embedding: bytes, embedder_id: str) -> None:
        """Attach an embedding to an entry."""
        ...

    def get_embeddings(self, keys: Sequence[str], embedder_id: str, now: float) -> list[tuple[str, str, bytes]]:
        """``(key, scope, embedding)`` of live entries among ``keys``."""
        ...

    def list_entries(self, selector: Selector | None, now: float, *, limit: int = 50, offset: int = 0) -> list[Entry]:
        """Live entries, newest first."""
        ...

    def count(self, now: float | None = None, embedder_id: str | None = None) -> int:
        """How many entries (live ones when ``now`` is given)."""
        ...


@runtime_checkable
class ChangeLog(Protocol):
    """A durable tier with a change log and shared marks (L3)."""

    def replay_writes(self, entries: Sequence[Entry], now: float) -> list[str]:
        """Writes replayed after an outage (also refused below the flush floor)."""
        ...

    def log_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str | None, int, str]]:
        """``(seq, key, version, op)`` after ``seq``."""
        ...

    def log_rows(self, seqs: list[int]) -> list[tuple[int, str | None, int, str]]:
        """The rows with these numbers."""
        ...

    def log_head(self) -> int:
        """The last ``seq``."""
        ...

    def mark_get(self, name: str) -> int | None:
        """A shared mark."""
        ...

    def mark_lower(self, name: str, value: int) -> None:
        """Lower (or set) a shared mark."""
        ...

    def mark_clear(self, name: str, value: int) -> bool:
        """Clear a mark if unchanged."""
        ...


@runtime_checkable
class Publisher(Protocol):
    """A shared tier that carries events between replicas (Redis pub/sub)."""

    client: Any

    def publish(self, channel: str, message: str) -> int:
        """Publish ``message`` on ``channel``."""
        ...


@runtime_checkable
class StreamLog(Protocol):
    """A shared tier that keeps the change log when there is no L3 (a Redis stream)."""

    def log_append(self, rows: Sequence[tuple[str | None, int, str]]) -> None:
        """Append ``(key, version, op)`` rows."""
        ...

    def log_read(self, since: str, count: int) -> list[tuple[str, str | None, int, str]]:
        """``(id, key, version, op)`` after ``since``."""
        ...

    def log_last_id(self) -> str:
        """The newest id (``0-0`` when empty)."""
        ...

    def log_first_id(self) -> str | None:
        """The oldest id kept."""
        ...


@runtime_checkable
class Handoff(Protocol):
    """A shared tier that durably holds what L3 missed while it was down (Redis)."""

    #: How long its tombstones refuse older copies.
    tombstone_ttl_seconds: float

    def handoff_put(self, entries: Sequence[Entry], deletes: Sequence[tuple[str, int]] = ()) -> None:
        """Record missed writes and deletes."""
        ...

    def handoff_size(self) -> int:
        """How many records wait."""
        ...

    def handoff_put_selector(self, selector: Selector, version: int) -> None:
        """Record a selector invalidation L3 missed."""
        ...

    def handoff_selectors(self) -> list[tuple[bytes, Selector, int]]:
        """``(raw, selector, version)`` waiting, oldest first."""
        ...

    def handoff_selector_done(self, raw: bytes) -> None:
        """Forget an applied selector invalidation."""
        ...

    def handoff_items(self) -> Iterator[tuple[str, bytes, int, Entry | None]]:
        """``(key, raw, version, entry or None)``."""
        ...

    def handoff_done(self, key: str, raw: bytes) -> None:
        """Forget a record L3 now holds."""
        ...

    def handoff_invalidate(self, selector: Selector, now: float, version: int) -> None:
        """Apply an invalidation to waiting records."""
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
