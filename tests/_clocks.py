"""Settable clocks for tests: ``SemanticCache(timer=...)`` for entries and TTLs,
``SemanticCache(monotonic=...)`` for the tiers' back-off windows."""

from __future__ import annotations

__all__ = ["MonotonicClock"]


class MonotonicClock:
    """A settable stand-in for ``time.monotonic``: ``advance(s)`` moves it, ``step()``
    moves it past any back-off window."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def step(self) -> None:
        self.now += 60.0
