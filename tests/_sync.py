"""Waiting on what the code under test did, not on the clock.

:class:`FlightWatch` counts who joined the calls of a
:class:`~semcache.singleflight.SingleFlight` (the decorator's table is
``flights_of(cache)``), so a test can hold a leader until its followers are waiting
instead of sleeping and hoping they arrived.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from semcache.singleflight import Call, SingleFlight


class FlightWatch:
    """Wraps ``flights.begin`` (on this instance only) and counts leaders and followers."""

    def __init__(self, flights: SingleFlight) -> None:
        self._cond = threading.Condition()
        self._hooks: list[tuple[int, Callable[[], None]]] = []
        self.leaders = 0
        self.followers = 0
        begin = flights.begin

        def counted(key: str) -> tuple[Call, bool]:
            call, leader = begin(key)
            with self._cond:
                if leader:
                    self.leaders += 1
                else:
                    self.followers += 1
                ready = [fn for n, fn in self._hooks if self.followers >= n]
                self._hooks = [(n, fn) for n, fn in self._hooks if self.followers < n]
                self._cond.notify_all()
            for fn in ready:
                fn()
            return call, leader

        flights.begin = counted  # type: ignore[method-assign]

    def wait_followers(self, n: int, timeout: float = 5.0) -> None:
        """Block until ``n`` followers have joined (a follower joins just before it waits)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.followers >= n, timeout)
        assert ok, f"only {self.followers} of {n} followers joined within {timeout}s"

    def followers_joined(self, n: int) -> threading.Event:
        """An event set once ``n`` followers have joined (for a leader to wait on)."""
        event = threading.Event()
        self._on(n, event.set)
        return event

    def followers_joined_async(self, n: int) -> asyncio.Event:
        """The same for tasks on the running loop; followers may join from any thread."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def fire() -> None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

        self._on(n, fire)
        return event

    def _on(self, n: int, fn: Callable[[], None]) -> None:
        with self._cond:
            if self.followers < n:
                self._hooks.append((n, fn))
                return
        fn()
