"""Replicas: events over Redis pub/sub (the fast path), L3's change log (the sure
path), the L2 repair and the hand-off drain.

What each replica holds privately (its L1 and, with the in-process index, its
index) must follow what the others change:

- **pub/sub** carries every write and invalidation at once (well under a second
  with Redis up); see :mod:`semcache.events`.
- **the change log** in L3 carries the same, durably: every
  ``Policy.log_poll_seconds`` (1 s) each replica reads the rows after the last one
  it saw and applies them to its L1 and index (versioned, so applying a row twice
  or late is harmless; on PostgreSQL rows may commit out of ``seq`` order, so
  numbers skipped over are asked for again until they appear). So what pub/sub lost — a replica that was
  disconnected, a writer whose Redis was down — arrives within the poll interval
  while L3 is up. A replica that fell behind the log's retention empties its L1.
- **the L2 repair**: a writer that could not reach L2 lowers the shared
  ``l2_repair`` mark; every replica stops reading L2 once it sees the mark (at its
  next poll), and the first to reach L2 replays the log from the mark into it as
  "drop older than this version", then clears the mark.
- **the hand-off**: writes L3 missed wait in L2; a replica that sees them drains
  them into L3 once L3 answers, and does not read L3 until then.
- **blocked pairings** (wrong semantic hits, :mod:`semcache.feedback`) travel the
  same two ways: a ``block`` event, and change-log rows with op ``b`` (the key is the
  pairing's id); a replica that lost track of the log reloads them all.

What is lost in which failure is stated in the README ("Consistency").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .chain import L2_REPAIR, Skip
from .core import Core
from .events import EventListener, apply_event
from .types import Selector

__all__ = ["Replicas"]

log = logging.getLogger("semcache")

_PAGE = 1000
#: How long a skipped log number is waited for (a rolled-back transaction never fills it).
_GAP_SECONDS = 30.0
#: More missing numbers than this at once means the rows were swept, not late.
_MAX_GAP = 10_000


class Replicas:
    """Events and the change log for one cache."""

    def __init__(self, core: Core, origin: str) -> None:
        self.core = core
        self.chain = core.chain
        self.origin = origin
        self.listener: EventListener | None = None
        self.last_seq = 0
        self._gaps: dict[int, float] = {}
        #: The last Redis stream entry applied (no L3: the stream is the change log).
        self.stream_id: str | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        #: Feedback's hooks: blocked pairings arrived, the log lost rows we never read, a poll.
        self.on_blocks: Callable[[list[str]], None] | None = None
        self.on_lost_track: Callable[[], None] | None = None
        self.on_tick: Callable[[], None] | None = None
        cfg = core.config.redis
        self.channel = f"{cfg.prefix}events" if cfg is not None else ""
        self.pubsub = cfg is not None and cfg.pubsub and self.chain.publisher is not None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to events and start following the change log."""
        pub = self.chain.publisher
        if self.pubsub and pub is not None:
            self.listener = EventListener(pub.client, self.channel, self.apply_event, self.events_missed)
            self.listener.start()
        lg, s3 = self.chain.log, self.chain.l3_slot
        if lg is not None and s3 is not None:
            try:
                self.last_seq = self.chain.call(s3, lg.log_head)
            except Skip:
                self.last_seq = -1  # read from the start once L3 answers (bounded by retention)
        stream, s2 = self.chain.stream, self.chain.l2_slot
        if stream is not None and s2 is not None and self.pubsub:
            try:
                self.stream_id = self.chain.call(s2, stream.log_last_id)
            except Skip:
                self.stream_id = None  # from the end once Redis answers, emptying L1 then
        interval = self.core.config.policy.log_poll_seconds
        if interval is not None and (lg is not None or self.chain.handoff is not None or self.chain.stream is not None):
            self._poller = threading.Thread(target=self._poll_every, args=(interval,), name="semcache-log", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        """Stop the listener and the poller."""
        self._stop.set()
        if self.listener is not None:
            self.listener.stop()
        if self._poller is not None:
            self._poller.join(timeout=5)

    # -- pub/sub ----------------------------------------------------------------------
    def publish(self, message: dict[str, Any]) -> None:
        """Publish a write or invalidation (lost if Redis is down: the log carries it)."""
        pub, s2 = self.chain.publisher, self.chain.l2_slot
        if not self.pubsub or pub is None or s2 is None:
            return
        message["origin"] = self.origin
        text = json.dumps(message)
        try:
            self.chain.call(s2, lambda: pub.publish(self.channel, text))
        except Skip:
            pass
        stream = self.chain.stream
        if stream is not None:
            rows = self._stream_rows(message)
            if rows:
                try:
                    self.chain.call(s2, lambda: stream.log_append(rows))
                except Skip:
                    pass

    def apply_event(self, msg: Mapping[str, Any]) -> None:
        """Apply an invalidation or index update published by another replica."""
        if msg.get("origin") == self.origin:
            return
        core = self.core
        apply_event(
            msg,
            memory=self.chain.l1,
            index=None if getattr(core.index, "shared", False) else core.index,
            embedder_id=None if core.embedder is None else core.embedder.model_id,
            now=core.timer(),
            blocks=self.on_blocks,
        )

    def events_missed(self) -> None:
        """The subscription dropped: events may have been missed, so this replica's L1
        copies can no longer be trusted until the log catches up (the shared tiers are)."""
        if self.chain.l1 is not None:
            self.chain.l1.clear()
            self.core.stats.inc("l1_cleared_after_event_gap")

    # -- the change log ------------------------------------------------------------------
    def _poll_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the poller must outlive any one failure
                log.warning("following the change log failed", exc_info=True)

    def tick(self) -> None:
        """One poll: drain the hand-off into L3, apply new log rows (the drained ones
        included), repair L2 if marked."""
        with self._tick_lock:
            self._drain()
            self._follow()
            if self.chain.log is None and self.pubsub:
                self._follow_stream()
            self._repair_l2()
            if self.on_tick is not None:
                self.on_tick()

    def _lost_track(self) -> None:
        """Rows of the log were never read here: this replica's L1 copies may be stale,
        and blocked pairings may be missing."""
        if self.chain.l1 is not None:
            self.chain.l1.clear()
        if self.on_lost_track is not None:
            self.on_lost_track()

    def _follow(self) -> None:
        # page through everything new: a replica never falls behind a busy log
        for _ in range(1000):
            if not self._follow_page():
                return

    def _follow_page(self) -> bool:
        """Apply one page of the log; return whether a full page was read (more may wait).

        On PostgreSQL, transactions commit out of ``seq`` order: a row may appear after
        rows numbered above it. A number skipped over is remembered as a *gap* and asked
        for again at every poll until it appears, or for ``_GAP_SECONDS`` (a rolled-back
        transaction leaves a gap that never fills)."""
        chain, core = self.chain, self.core
        lg, s3 = chain.log, chain.l3_slot
        if lg is None or s3 is None:
            return False
        start = self.last_seq
        if start < 0:
            self._lost_track()  # what we hold predates a log we could not read
            start = 0
        gaps = sorted(self._gaps)
        try:
            rows = chain.call(s3, lambda: lg.log_since(start, _PAGE))
            if gaps:
                rows = chain.call(s3, lambda: lg.log_rows(gaps)) + rows
        except Skip:
            return False
        clock = time.monotonic()
        prev = start
        for seq, *_ in rows:
            if seq in self._gaps:
                del self._gaps[seq]
            elif seq > prev:
                if start > 0 and seq - prev - 1 > _MAX_GAP:
                    # far more rows missing than commit order explains: swept before we
                    # read them (we fell behind the retention), so our copies may be stale
                    self._lost_track()
                elif start > 0:
                    for missing in range(prev + 1, seq):
                        self._gaps.setdefault(missing, clock)
                prev = seq
        for missing, since in list(self._gaps.items()):
            if clock - since > _GAP_SECONDS:
                del self._gaps[missing]
        added = self._apply_rows([(key, version, op) for _, key, version, op in rows])
        self.last_seq = max(start, prev)
        core.stats.inc("replica_log_applied", len(rows))
        if added:
            self._index_add(added)
        return len(rows) - len(gaps) >= _PAGE

    def _apply_rows(self, rows: list[tuple[str | None, int, str]]) -> list[str]:
        """Apply change-log rows to this replica's L1 and index; return the keys whose
        vectors the index still needs."""
        chain, core = self.chain, self.core
        now = core.timer()
        l1, index = chain.l1, core.index
        if getattr(index, "shared", False):
            index = None  # pgvector: L3's index already holds what was committed
        added: list[str] = []
        blocked: list[str] = []
        for key, version, op in rows:
            if op == "b":
                if key is not None:
                    blocked.append(key)  # a blocked pairing: the key is its id
                continue
            if op == "f":
                if l1 is not None:
                    l1.invalidate(Selector.everything(), now, version)
                if index is not None:
                    index.clear()
                    added.clear()
                continue
            if key is None:
                continue
            if op == "s":
                if l1 is not None:
                    l1.delete([key], version - 1)
                if index is not None and key not in index:
                    added.append(key)
            elif op == "d":
                if l1 is not None:
                    l1.delete([key], version)
                if index is not None:
                    index.remove([key])
        if blocked and self.on_blocks is not None:
            self.on_blocks(blocked)
        return added

    # -- the change log in Redis, when there is no L3 ---------------------------------------
    def _stream_rows(self, message: Mapping[str, Any]) -> list[tuple[str | None, int, str]]:
        ver = message.get("ver")
        if message.get("op") == "add":
            return [(str(i["key"]), int(i["ver"]), "s") for i in message.get("items") or () if i.get("ver")]
        if message.get("op") == "inv" and isinstance(ver, int):
            if (message.get("sel") or {}).get("all"):
                return [(None, ver, "f")]
            return [(str(k), ver, "d") for k in message.get("keys") or ()]
        return []

    def _follow_stream(self) -> None:
        chain = self.chain
        stream, s2 = chain.stream, chain.l2_slot
        if stream is None or s2 is None:
            return
        try:
            if self.stream_id is None:
                self.stream_id = chain.call(s2, stream.log_last_id)
                self._lost_track()  # what we hold predates a log we could not read
            for _ in range(1000):
                since = self.stream_id
                rows = chain.call(s2, lambda: stream.log_read(since, _PAGE))
                if not rows:
                    return
                first = chain.call(s2, stream.log_first_id)
                if since != "0-0" and first is not None and _stream_after(first, since, rows[0][0]):
                    # entries we never read were trimmed away: our copies may be stale
                    self._lost_track()
                self._apply_rows([(key, version, op) for _, key, version, op in rows])
                self.stream_id = rows[-1][0]
                self.core.stats.inc("replica_log_applied", len(rows))
                if len(rows) < _PAGE:
                    return
        except Skip:
            return

    def _index_add(self, keys: list[str]) -> None:
        """Add vectors written by other replicas (their pub/sub message may be lost)."""
        core, chain = self.core, self.chain
        store = chain.store
        if core.index is None or core.embedder is None or store is None or chain.l3_slot is None:
            return
        mid = core.embedder.model_id
        try:
            found = chain.call(chain.l3_slot, lambda: store.get_embeddings(keys, mid, core.timer()))
        except Skip:
            return
        for key, scope, emb in found:
            v = np.frombuffer(emb, dtype=np.float32)
            if v.shape == (core.index.dim,) and np.isfinite(v).all():
                core.index.add(scope, [key], v.reshape(1, -1))

    def _repair_l2(self) -> None:
        chain = self.chain
        lg, s3, s2 = chain.log, chain.l3_slot, chain.l2_slot
        if lg is None or s3 is None or s2 is None:
            return
        try:
            mark = chain.call(s3, lambda: lg.mark_get(L2_REPAIR))
        except Skip:
            return
        if mark is None:
            chain.l2_dirty = False
            return
        chain.l2_dirty = True
        b2 = s2.backend
        seq = mark
        try:
            while True:
                rows = chain.call(s3, lambda: lg.log_since(seq, _PAGE))
                if not rows:
                    break
                for _, key, version, op in rows:
                    if op == "f":
                        chain.call(s2, lambda: b2.invalidate(Selector.everything(), 0.0, version))
                    elif key is not None and op in ("s", "d"):
                        v = version - 1 if op == "s" else version
                        chain.call(s2, lambda: b2.delete([key], v))
                seq = rows[-1][0]
            if chain.call(s3, lambda: lg.mark_clear(L2_REPAIR, mark)):
                chain.l2_dirty = False
                log.info("L2 repaired from the change log")
        except Skip:
            return

    def _drain(self) -> None:
        chain = self.chain
        ho, s2, s3 = chain.handoff, chain.l2_slot, chain.l3_slot
        if ho is None or s2 is None or s3 is None:
            return
        epoch = chain.handoff_epoch
        try:
            size = chain.call(s2, ho.handoff_size)
        except Skip:
            return
        chain.note_handoff_size(size, epoch)
        if chain.handoff_waiting:
            try:
                chain.call(s3, lambda: None)  # the call replays the hand-off first
            except Skip:
                pass


def _stream_after(first: str, since: str, got: str) -> bool:
    """Whether the stream's first entry is past ``since`` and is what we got first: the
    entries between were trimmed (ids are ``ms-seq``)."""
    def key(i: str) -> tuple[int, int]:
        a, _, b = i.partition("-")
        return int(a), int(b or 0)

    return key(first) > key(since) and first == got
