"""The tier chain: slots, health, back-off and probe, what each tier missed, and replay.

A tier that fails with :class:`~semcache.errors.BackendUnavailable` is skipped for a
back-off that starts at ``Policy.backoff_initial_seconds`` and doubles up to
``Policy.backoff_max_seconds`` (a second by default); after it, the next call is the
probe, so a tier that is healthy again is used again within about a second. No call
waits on a tier longer than that tier's own timeout (Redis socket timeout, SQL
connect and pool timeouts).

What a tier missed while it was skipped is kept and replayed before it serves again:

- a cache tier (L1, L2) missed writes and deletes as "drop what you hold of this key
  older than version v" (safe in any order: a cache copy can always be dropped);
  across processes, a missed L2 operation also lowers the shared ``l2_repair`` mark
  in L3, and every replica stops reading L2 until one of them has replayed L3's
  change log from that mark into L2 (:mod:`semcache.replicas`);
- the durable tier (L3) missed writes and deletes go to L2's durable hand-off hash
  (any replica drains it into L3 once L3 is back, and none reads L3 while it is
  not empty), or, with L2 down as well, to this process's memory: then the write is
  reported as not durable (``Entry.durable is False``).

Roles are found once, with ``isinstance`` on the protocols of :mod:`semcache.tiers.base`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config import Policy
from .errors import BackendError, BackendFailed, BackendUnavailable
from .stats import Counters
from .tiers.base import Backend, ChangeLog, EmbeddingStore, Handoff, Listable, Openable, Pingable, ProcessMemory, Publisher, StreamLog, Sweepable, Tombstones
from .types import Entry, Selector

__all__ = ["L2_REPAIR", "Skip", "TierChain", "TierSlot"]

log = logging.getLogger("semcache")
T = TypeVar("T")

#: The shared mark (in L3) from which L2 must be repaired from the change log.
L2_REPAIR = "l2_repair"
#: Missed keys kept per cache tier before it is emptied on recovery instead.
_MAX_PENDING = 10_000
#: Writes held in memory for L3 (with L2 down too) before new ones are refused.
_MAX_HELD = 100_000


class Skip(Exception):
    """A tier was skipped (down, in back-off, or it just failed)."""


@dataclass
class TierSlot:
    """One tier in the chain, with its health and what it missed."""

    backend: Backend
    name: str
    #: The durable tier: its misses are handed off, not dropped.
    durable: bool = False
    #: Whether lookups read it with ``read`` (a tombstone answers with its version)
    #: rather than ``get``; found once, off the hot path.
    tombstones: bool = False
    failures: int = 0
    down_until: float = 0.0
    errors: int = 0
    skipped: int = 0
    failed: str | None = None
    #: Cache tiers: key -> version; what this tier holds of the key older than it is stale.
    stale: dict[str, int] = field(default_factory=dict)
    #: Cache tiers: drop everything older than this version (a missed flush, or too much missed).
    stale_floor: int = 0
    #: Selector invalidations this tier missed, with their versions.
    stale_selectors: list[tuple[Selector, int]] = field(default_factory=list)
    #: The durable tier: writes (Entry) and deletes (version) it missed, held here
    #: only while no hand-off could take them.
    held: dict[str, Entry | int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def behind(self) -> bool:
        """Whether the tier missed something it must apply before serving."""
        return bool(self.stale or self.stale_floor or self.stale_selectors or self.held)


class TierChain:
    """The tiers, top first, with their roles, back-off and replay."""

    def __init__(
        self,
        backends: Sequence[Backend],
        policy: Policy,
        stats: Counters,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.stats = stats
        self.monotonic = monotonic
        #: The cache's clock: replays judge expiry and ``older_than`` by it, like every call.
        self.timer = timer
        self.slots: list[TierSlot] = []
        for i, b in enumerate(backends):
            name = str(b.name or f"t{i}")
            durable = isinstance(b, EmbeddingStore) and isinstance(b, ChangeLog)
            self.slots.append(TierSlot(b, name, durable=durable, tombstones=isinstance(b, Tombstones)))
        self.l1: ProcessMemory | None = next((s.backend for s in self.slots if isinstance(s.backend, ProcessMemory)), None)
        self.l1_slot = next((s for s in self.slots if s.backend is self.l1), None) if self.l1 is not None else None
        self.l3_slot = next((s for s in self.slots if s.durable), None)
        self.l2_slot = next((s for s in self.slots if isinstance(s.backend, Handoff)), None)
        b3 = None if self.l3_slot is None else self.l3_slot.backend
        b2 = None if self.l2_slot is None else self.l2_slot.backend
        self.store: EmbeddingStore | None = b3 if isinstance(b3, EmbeddingStore) else None
        self.log: ChangeLog | None = b3 if isinstance(b3, ChangeLog) else None
        self.sweeper: Sweepable | None = b3 if isinstance(b3, Sweepable) else None
        self.lister: Listable | None = b3 if isinstance(b3, Listable) else None
        self.handoff: Handoff | None = b2 if isinstance(b2, Handoff) else None
        self.publisher: Publisher | None = b2 if isinstance(b2, Publisher) else None
        #: With no L3, the change log replicas follow is a stream in L2.
        self.stream: StreamLog | None = b2 if isinstance(b2, StreamLog) and self.log is None else None
        #: Another replica lowered the L2 repair mark: L2 may hold stale copies, so it
        #: is not read (writes still go to it) until the change log is replayed into it.
        self.l2_dirty = False
        #: L2's hand-off holds writes L3 missed: L3 is not read until they are drained.
        self.handoff_waiting = False
        #: Bumped by every hand-off this process makes: a drain or a poll that measured
        #: the hand-off empty clears ``handoff_waiting`` only if none was made meanwhile.
        self.handoff_epoch = 0
        self._l2_marked_at = -1e9
        self.on_recover: Callable[[TierSlot], None] | None = None

    # -- lifecycle ---------------------------------------------------------------
    def open(self) -> None:
        """Connect every tier; a tier that is down at start degrades the cache."""
        for slot in self.slots:
            b = slot.backend
            if not isinstance(b, Openable):
                continue
            try:
                b.open()
            except BackendError as exc:
                self.fail(slot, exc)

    def close(self) -> None:
        """Close every tier."""
        for slot in self.slots:
            try:
                slot.backend.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.debug("closing %s failed", slot.name, exc_info=True)

    # -- calls with back-off ---------------------------------------------------------
    def down(self, slot: TierSlot) -> bool:
        """Whether ``slot`` is in its back-off window now."""
        return bool(slot.down_until) and self.monotonic() < slot.down_until

    def fail(self, slot: TierSlot, exc: BaseException) -> None:
        """Count a failure; an unavailable tier goes into back-off."""
        slot.errors += 1
        self.stats.inc(f"{slot.name}_errors")
        if not isinstance(exc, BackendUnavailable):
            # a failed statement (a constraint, a bad value) says nothing about the
            # tier's health: count it, but keep using the tier
            log.warning("tier %s: %s", slot.name, type(exc).__name__)
            return
        slot.failures += 1
        slot.failed = str(exc) if isinstance(exc, BackendFailed) else None
        pol = self.policy
        # the exponent is capped: after a long outage 2**failures would overflow a float
        backoff = min(pol.backoff_max_seconds, pol.backoff_initial_seconds * 2.0 ** min(slot.failures - 1, 60))
        slot.down_until = self.monotonic() + backoff
        # the class only: driver messages can carry prompts and payloads
        log.warning("tier %s is unavailable (%s); probing it again in %.2fs", slot.name, type(exc.__cause__ or exc).__name__, backoff)

    def call(self, slot: TierSlot, fn: Callable[[], T], *, read: bool = False, defer: bool = False) -> T:
        """Run ``fn`` against ``slot`` unless it is in back-off; replay what it missed first.
        A ``read`` of L3 is refused (skipped) while L2's hand-off holds writes that could
        not be drained into it: L3 may be older than what was acknowledged.

        Raises:
            Skip: the tier is down or just failed (``on_backend_error="miss"``).
            BackendError: it failed and ``on_backend_error="raise"`` (unless ``defer``:
                a write raises only after every tier was tried and what a tier missed
                was recorded, see :meth:`raise_deferred`).
        """
        if self.down(slot) or slot.failed is not None:
            # a failed tier (damaged storage) is neither read nor written until a
            # health check finds it sound again
            slot.skipped += 1
            raise Skip
        try:
            if slot.behind:
                self.replay(slot)
            if slot is self.l3_slot and self.handoff_waiting and not self.drain_handoff() and read:
                slot.skipped += 1
                raise Skip
            result = fn()
        except BackendError as exc:
            self.fail(slot, exc)
            if self.policy.on_backend_error == "raise" and not defer:
                raise
            raise Skip from exc
        if slot.failures:
            slot.failures = 0
            slot.down_until = 0.0
            log.info("tier %s recovered", slot.name)
            if self.on_recover is not None:
                self.on_recover(slot)
        return result

    def raise_deferred(self, skips: list[Skip]) -> None:
        """With ``on_backend_error="raise"``, raise the first tier error of a write
        (after it was recorded as missed and the other tiers were written)."""
        if self.policy.on_backend_error == "raise":
            for skip in skips:
                if isinstance(skip.__cause__, BackendError):
                    raise skip.__cause__

    def readable(self, slot: TierSlot) -> bool:
        """Whether lookups may read ``slot`` now (it may be stale for a known reason)."""
        if slot is self.l2_slot and self.l2_dirty:
            return False
        return True

    # -- what a tier missed ------------------------------------------------------------
    def missed(self, slot: TierSlot, *, versions: dict[str, int] | None = None, selector: Selector | None = None, version: int = 0) -> None:
        """Remember that a cache tier missed changes (``versions``: key -> version)."""
        with slot.lock:
            if selector is not None and selector.all:
                slot.stale_floor = max(slot.stale_floor, version)
            elif selector is not None:
                slot.stale_selectors.append((selector, version))
            for k, v in (versions or {}).items():
                if v > slot.stale.get(k, 0):
                    slot.stale[k] = v
            if len(slot.stale) + len(slot.stale_selectors) > _MAX_PENDING:
                # too much was missed to replay key by key: empty the copy instead
                slot.stale_floor = max([slot.stale_floor, version, *slot.stale.values()])
                slot.stale.clear()
                slot.stale_selectors.clear()
        self.stats.inc(f"{slot.name}_deferred")
        if slot is self.l2_slot and self.log is not None and self.l3_slot is not None and self.monotonic() - self._l2_marked_at > 0.5:
            # tell the other replicas: L2 may now hold what this process could not
            # overwrite or delete there; they read it again only after a repair
            try:
                lg = self.log
                head = self.call(self.l3_slot, lg.log_head)
                self.call(self.l3_slot, lambda: lg.mark_lower(L2_REPAIR, max(0, head - 1000)))
                self._l2_marked_at = self.monotonic()
            except Skip:
                pass

    def hold(self, entries: Sequence[Entry], deletes: Sequence[tuple[str, int]] = (), selector: tuple[Selector, int] | None = None) -> bool:
        """Keep what the durable tier missed: in L2's hand-off if it takes it (durable),
        else in this process (not durable). Return whether it is durable."""
        slot = self.l3_slot
        assert slot is not None
        if self.handoff is not None and self.l2_slot is not None:
            ho = self.handoff
            try:
                if selector is not None:
                    sel, ver = selector
                    self.call(self.l2_slot, lambda: ho.handoff_put_selector(sel, ver))
                else:
                    self.call(self.l2_slot, lambda: ho.handoff_put(entries, deletes))
                self.handoff_epoch += 1
                self.handoff_waiting = True
                self.stats.inc("l3_handed_off", max(1, len(entries) + len(deletes)))
                return True
            except Skip:
                pass
        with slot.lock:
            if len(slot.held) + len(entries) + len(deletes) > _MAX_HELD:
                # memory is bounded: past this, writes are reported not durable and not held
                self.stats.inc("l3_held_refused", len(entries) + len(deletes))
                log.error("more than %d writes wait for L3 in memory; refusing to hold more", _MAX_HELD)
                return False
            for e in entries:
                cur = slot.held.get(e.key)
                if cur is None or _version(cur) < e.version:
                    slot.held[e.key] = e
            for k, v in deletes:
                cur = slot.held.get(k)
                if cur is None or _version(cur) < v:
                    slot.held[k] = v
            if selector is not None:
                slot.stale_selectors.append(selector)
        self.stats.inc("l3_held_in_memory", len(entries) + len(deletes))
        return False

    def replay(self, slot: TierSlot) -> None:
        """Apply what ``slot`` missed (raises the tier's error if it fails again)."""
        now = self.timer()
        with slot.lock:
            stale, floor, sels, held = dict(slot.stale), slot.stale_floor, list(slot.stale_selectors), dict(slot.held)
        b = slot.backend
        # writes first, then deletes and invalidations: a delete or an invalidation
        # refuses nothing newer than itself, so this order never resurrects what an
        # invalidation that came after a write removed
        writes = [e for e in held.values() if isinstance(e, Entry)]
        if writes and self.log is not None:
            self.log.replay_writes(writes, now)
        for k, h in held.items():
            if isinstance(h, int):
                b.delete([k], h)
        if floor:
            b.invalidate(Selector.everything(), now, floor)
        for sel, v in sels:
            b.invalidate(sel, now, v)
        if stale:
            by_version: dict[int, list[str]] = {}
            for k, v in stale.items():
                by_version.setdefault(v, []).append(k)
            for v, ks in by_version.items():
                b.delete(ks, v)
        with slot.lock:
            # forget what was applied, unless something newer was missed meanwhile
            if slot.stale_floor == floor:
                slot.stale_floor = 0
            del slot.stale_selectors[: len(sels)]
            for k, v in stale.items():
                if slot.stale.get(k) == v:
                    del slot.stale[k]
            for k, h in held.items():
                if slot.held.get(k) is h:
                    del slot.held[k]

    def drain_handoff(self) -> bool:
        """Write L2's hand-off into L3 (any replica may; each record is versioned, so
        concurrent drains agree). Return whether nothing is left waiting. L2 failing
        here stops the drain (and counts against L2, not L3).

        Raises:
            BackendError: L3 failed.
        """
        ho, l3, s2, lg = self.handoff, self.l3_slot, self.l2_slot, self.log
        if ho is None or l3 is None or s2 is None or lg is None:
            self.handoff_waiting = False
            return True
        now = self.timer()
        n = 0
        epoch = self.handoff_epoch
        try:
            # writes and deletes first, then selector invalidations (see replay)
            for key, raw, version, entry in self.call(s2, lambda: list(ho.handoff_items())):
                if entry is not None:
                    lg.replay_writes([entry], now)
                else:
                    l3.backend.delete([key], version)
                self.call(s2, lambda: ho.handoff_done(key, raw))
                n += 1
            for raw_sel, sel, ver in self.call(s2, ho.handoff_selectors):
                l3.backend.invalidate(sel, now, ver)
                self.call(s2, lambda: ho.handoff_selector_done(raw_sel))
                n += 1
            self.note_handoff_size(self.call(s2, ho.handoff_size), epoch)
        except Skip:
            return False
        finally:
            if n:
                self.stats.inc("l3_handoff_drained", n)
                log.info("wrote %d writes and deletes that L3 missed into it", n)
        return not self.handoff_waiting

    def note_handoff_size(self, size: int, epoch: int) -> None:
        """Record a measured hand-off size; ``epoch`` is :attr:`handoff_epoch` from
        before the measurement (a hand-off made since keeps the flag set)."""
        if size > 0:
            self.handoff_waiting = True
        elif self.handoff_epoch == epoch:
            self.handoff_waiting = False

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        """Ping every tier: ``{"l1": "ok", "l2": "down: ...", "l3": "failed: ..."}``."""
        out: dict[str, str] = {}
        for slot in self.slots:
            b = slot.backend
            if not isinstance(b, Pingable):
                out[slot.name] = "ok"
                continue
            try:
                b.ping()
                out[slot.name] = "ok"
                slot.failed = None
            except BackendFailed as exc:
                slot.failed = str(exc)
                out[slot.name] = f"failed: {exc}"
            except BackendError as exc:
                out[slot.name] = f"down: {exc}"
        return out


def _version(held: Entry | int) -> int:
    return held.version if isinstance(held, Entry) else held
