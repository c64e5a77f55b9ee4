"""L1: an in-process LRU of entries, bounded by entry count and by bytes (cachetools).

Versioned (see :mod:`semcache.versions`): L1 remembers, per key, the newest version
it was given — by a write, or by a delete (a tombstone) — even after the entry itself
is evicted, and refuses anything older, so a write older than a delete it raced, or a
lookup's copy of an entry that was overwritten or deleted meanwhile, is ignored.

A promotion (a copy of what a lookup read from a lower tier) also carries a *read
token* taken before the lookup read anything (:meth:`MemoryBackend.mark`): it is
refused if the key was changed here without a version since (an unversioned delete, a
clear after a gap in replica events), or if the memory of versions had to forget keys
since (it is bounded; forgetting refuses every copy in flight, never more).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache

from ..config import MemoryConfig
from ..types import Entry, Selector
from .base import tier_expiry

__all__ = ["MemoryBackend"]


#: Tombstones and per-key change marks kept; older ones fold into a floor (safe, since
#: a floor only refuses more).
_MAX_MARKS = 100_000


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
        # unversioned changes: a sequence, recorded per key (bounded; forgetting raises the floor)
        self._seq = 0
        self._changed: OrderedDict[str, int] = OrderedDict()
        self._changed_floor = 0
        # the newest version seen per key, and whether it was a delete (bounded)
        self._seen: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        self._tomb_floor = 0
        self._refused = 0

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

    def read(self, key: str, now: float) -> Entry | int | None:
        """Like :meth:`get`, but a key deleted here answers with its tombstone's version."""
        entry = self.get(key, now)
        if entry is not None:
            return entry
        with self._lock:
            seen = self._seen.get(key)
            return seen[0] if seen is not None and seen[1] else None

    def mark(self) -> int:
        """A read token: pass it to :meth:`set` to copy what was read only if the key
        has not changed here since."""
        with self._lock:
            return self._seq

    def _touch(self, key: str) -> None:
        # an unversioned change (under the lock)
        self._seq += 1
        self._changed[key] = self._seq
        self._changed.move_to_end(key)
        if len(self._changed) > _MAX_MARKS:
            _, old = self._changed.popitem(last=False)
            self._changed_floor = max(self._changed_floor, old)

    def _see(self, key: str, version: int, deleted: bool) -> bool:
        """Remember the newest version of ``key`` (under the lock); whether it was newer."""
        cur = self._seen.get(key)
        if cur is not None and (cur[0], cur[1]) >= (version, deleted):
            return False
        self._seen[key] = (version, deleted)
        self._seen.move_to_end(key)
        if len(self._seen) > _MAX_MARKS:
            # forgetting a key's version: refuse every copy a lookup in flight would make
            self._seen.popitem(last=False)
            self._seq += 1
            self._changed_floor = self._seq
        return True

    def set(self, entry: Entry, now: float, *, token: int | None = None) -> bool:
        """Keep ``entry`` until its (capped) expiry, unless this tier has seen a newer
        version or a delete of its key; return whether it was kept.

        With ``token`` (from :meth:`mark`, taken before a lookup read ``entry`` from a
        lower tier) the copy is also refused if the key changed here without a version since.
        """
        until = tier_expiry(entry, now, self.max_ttl_seconds)
        if until is not None and until <= now:
            return False
        slot = _Slot(entry, until, entry.size())
        key = entry.key
        with self._lock:
            if token is not None and self._changed.get(key, self._changed_floor) > token:
                self._refused += 1
                return False
            seen = self._seen.get(key)
            if (self._tomb_floor and entry.version <= self._tomb_floor) or (
                seen is not None and (entry.version < seen[0] or (seen[1] and entry.version <= seen[0]))
            ):
                self._refused += 1
                return False
            cur = self._lru.get(key)
            if cur is not None and cur.entry.version > entry.version:
                self._refused += 1
                return False
            if entry.version:
                self._see(key, entry.version, False)
            try:
                self._lru[key] = slot
            except ValueError:
                # larger than the whole byte budget: L1 is only a copy, skip it
                self._lru.pop(key, None)
                return False
        return True

    def set_many(self, entries: Sequence[Entry], now: float) -> None:
        """Keep many entries (one call per batch, like the other tiers)."""
        for entry in entries:
            self.set(entry, now)

    def delete(self, keys: Sequence[str], version: int | None = None) -> int:
        """Delete entries by key: with ``version``, those not newer than it, leaving a tombstone."""
        n = 0
        with self._lock:
            for k in keys:
                if version is None:
                    self._touch(k)
                else:
                    self._see(k, version, True)
                    cur = self._lru.get(k)
                    if cur is not None and cur.entry.version > version:
                        continue  # a newer write than this delete
                if self._lru.pop(k, None) is not None:
                    n += 1
        return n

    def invalidate(self, selector: Selector, now: float, version: int | None = None) -> list[str]:
        """Delete every entry the selector matches (a scan of L1); with ``version``,
        only entries older than it, leaving tombstones (a flush raises the floor)."""
        with self._lock:
            if selector.all:
                self._seq += 1
                self._changed_floor = self._seq
                self._changed.clear()
                if version is not None:
                    self._tomb_floor = max(self._tomb_floor, version)
            if selector.keys and len(selector.keys) < len(self._lru):
                candidates = [(k, self._lru[k]) for k in selector.keys if k in self._lru]
            else:
                candidates = list(self._lru.items())
            gone = [
                k
                for k, slot in candidates
                if selector.matches(slot.entry, now) and (version is None or slot.entry.version <= version)
            ]
            for k in gone:
                del self._lru[k]
            # named keys are marked even when absent: a lookup in flight that read one
            # from a lower tier must not copy it here
            for k in set(gone).union(selector.keys):
                if version is None:
                    self._touch(k)
                elif not selector.all:
                    self._see(k, version, True)
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
                "refused": self._refused,
            }

    def clear(self) -> None:
        """Drop everything, and refuse every copy a lookup in flight would make
        (used when this replica may have missed events)."""
        with self._lock:
            self._lru.clear()
            self._seq += 1
            self._changed_floor = self._seq
            self._changed.clear()

    def close(self) -> None:
        """Drop everything."""
        self.clear()
