"""Write versions: one 64-bit integer per write or delete, ordered like real time.

A version is the wall clock in nanoseconds, bumped past the last version this
process handed out, so versions from one process are strictly increasing and a
write that starts after another one returned (on any process on the same clock)
gets a higher version. Replicas on different machines rely on their clocks being
synchronised to well under the time between two writes of one key (NTP keeps them
within milliseconds); a skewed clock can make one write lose to an older one, never
resurrect a delete that it did not race.

Every tier keeps, per key, the highest version it was given: a set with a lower
version than what the tier holds (an entry or a tombstone) is ignored. That makes
replaying queued operations safe in any order, and a promotion of a stale read a
no-op.
"""

from __future__ import annotations

import threading
import time

__all__ = ["VersionClock", "next_version", "version_text"]

#: Versions as fixed-width decimal text compare like the numbers (Redis scripts
#: compare them as strings: Lua numbers are doubles and would lose digits).
WIDTH = 20


class VersionClock:
    """Hands out strictly increasing versions based on ``time.time_ns``."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """A version higher than every version handed out before, here."""
        now = time.time_ns()
        with self._lock:
            self._last = now if now > self._last else self._last + 1
            return self._last


_CLOCK = VersionClock()


def next_version() -> int:
    """The next version from the process-wide clock."""
    return _CLOCK.next()


def version_text(version: int) -> str:
    """``version`` as fixed-width text that sorts like the number."""
    return str(version).zfill(WIDTH)
