"""L1: an in-process LRU of entries, bounded by entry count and by bytes (cachetools)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache

from ..config import MemoryConfig
from ..types import Entry, Selector
from .base import tier_expiry

__all__ = ["MemoryBackend"]


class _Slot:
    __slots__ = ("entry", "size", "until")

    def __init__(self, entry: Entry, until: float | None, size: int) -> None:
        self.entry = entry
        self.until = until
        self.size = size


class _CountingLRU(LRUCache):  # type: ignore[type-arg]
    """An LRU bounded by bytes (``maxsize``) and by count, counting evictions."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda slot: slot.size)
        self.max_entries = max_entries
        self.evictions = 0

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self.evictions += 1
        return item

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem()


class MemoryBackend:
    """L1 tier: entries in process memory. Thread-safe; every method is O(1) but ``invalidate``.

    An entry larger than ``max_bytes`` is not kept (cachetools refuses it); that is
    not an error, L1 is only a copy.
    """

    name = "l1"
    #: Never waits on I/O: the async adapter calls it inline, without a thread hop.
    blocking = False

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024, max_ttl_seconds: float | None = None) -> None:
        self.max_ttl_seconds = max_ttl_seconds
        self._lru = _CountingLRU(max_bytes, max_entries)
        self._lock = threading.Lock()
        self._expired = 0

    @classmethod
    def from_config(cls, config: MemoryConfig) -> MemoryBackend:
        """Build the tier from its :class:`~semcache.config.MemoryConfig`."""
        return cls(max_entries=config.max_entries, max_bytes=config.max_bytes, max_ttl_seconds=config.max_ttl_seconds)

    def get(self, key: str, now: float) -> Entry | None:
        """Return the live entry under ``key``; drop it if it has expired."""
        with self._lock:
            slot = self._lru.get(key)
            if slot is None:
                return None
            if slot.until is not None and now >= slot.until:
                del self._lru[key]
                self._expired += 1
                return None
            return slot.entry  # type: ignore[no-any-return]

    def set(self, entry: Entry, now: float) -> None:
        """Keep ``entry`` until its (capped) expiry."""
        until = tier_expiry(entry, now, self.max_ttl_seconds)
        if until is not None and until <= now:
            return
        slot = _Slot(entry, until, entry.size())
        with self._lock:
            try:
                self._lru[entry.key] = slot
            except ValueError:
                # larger than the whole byte budget: L1 is only a copy, skip it
                self._lru.pop(entry.key, None)

    def set_many(self, entries: Sequence[Entry], now: float) -> None:
        """Keep many entries (one call per batch, like the other tiers)."""
        for entry in entries:
            self.set(entry, now)

    def delete(self, keys: Sequence[str]) -> int:
        """Delete entries by key."""
        n = 0
        with self._lock:
            for k in keys:
                if self._lru.pop(k, None) is not None:
                    n += 1
        return n

    def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete every entry the selector matches (a scan of L1)."""
        with self._lock:
            if selector.keys and len(selector.keys) < len(self._lru):
                candidates = [(k, self._lru[k]) for k in selector.keys if k in self._lru]
            else:
                candidates = list(self._lru.items())
            gone = [k for k, slot in candidates if selector.matches(slot.entry, now)]
            for k in gone:
                del self._lru[k]
        return gone

    def stats(self) -> dict[str, Any]:
        """Entries, bytes, evictions and expirations seen."""
        with self._lock:
            return {
                "entries": len(self._lru),
                "bytes": int(self._lru.currsize),
                "max_entries": self._lru.max_entries,
                "max_bytes": int(self._lru.maxsize),
                "evictions": self._lru.evictions,
                "expired": self._expired,
            }

    def clear(self) -> None:
        """Drop everything (used when a replica is told to flush)."""
        with self._lock:
            self._lru.clear()

    def close(self) -> None:
        """Drop everything."""
        self.clear()
