"""A write replayed into L3 after an outage (L2's hand-off, or what a process held) never
outlives a flush that came after it, even when the replay's transaction and the flush's
overlap on PostgreSQL.

The race this pins: the replay read the flush floor, then a flush raised the floor and
deleted the live rows it could see, then the replay committed its older row, which the
flush's delete had not seen: a flushed entry came back (the history checker found it
under faults). The replay now holds the floor's row with a share lock until it commits,
so the flush waits for it and then deletes its row too.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text

from semcache.tiers.sql import SQLBackend
from semcache.types import Selector
from tests.contract.test_backend_contract import NOW, make_entry

pytestmark = pytest.mark.postgres


def _waiting_on_a_lock(url: str) -> bool:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            n = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )).scalar_one()
        return bool(n)
    finally:
        eng.dispose()


def test_a_replay_overlapping_a_later_flush_does_not_bring_the_entry_back(pg_schema_url, monkeypatch):
    replayer, flusher = SQLBackend(pg_schema_url), SQLBackend(pg_schema_url)
    replayer.open()
    flusher.open()
    old = replace(make_entry("k-old"), version=100)
    read_floor, go = threading.Event(), threading.Event()
    original = SQLBackend._floor

    def pausing_floor(self, conn, *, lock=False):
        floor = original(self, conn, lock=lock)
        if self is replayer:  # the replay has read the floor: hold it there
            read_floor.set()
            assert go.wait(30)
        return floor

    monkeypatch.setattr(SQLBackend, "_floor", pausing_floor)
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    replay = threading.Thread(target=run, args=(lambda: replayer.replay_writes([old], NOW),))
    replay.start()
    assert read_floor.wait(30)
    # a flush after the write (a higher version), while the replay is between its floor
    # read and its commit
    flush = threading.Thread(target=run, args=(lambda: flusher.invalidate(Selector.everything(), NOW, 200),))
    flush.start()
    # let the replay go once the flush has finished (no lock: the old race) or waits
    # for the replay's lock (the fix); either is observed, never assumed after a delay
    deadline = threading.Event()
    for _ in range(3000):
        if not flush.is_alive() or _waiting_on_a_lock(pg_schema_url):
            break
        deadline.wait(0.01)
    go.set()
    replay.join(30)
    flush.join(30)
    assert not errors, errors
    monkeypatch.setattr(SQLBackend, "_floor", original)
    assert flusher.get("k-old", NOW) is None  # flushed, and not brought back by the replay
    # and a replay after the flush is refused by its floor
    assert replayer.replay_writes([replace(old, version=150)], NOW) == []
    assert replayer.get("k-old", NOW) is None
    # a write newer than the flush is kept
    assert replayer.replay_writes([replace(old, version=250)], NOW) == ["k-old"]
    replayer.close()
    flusher.close()
