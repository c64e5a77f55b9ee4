"""Lead or follow: one call for many identical requests, in a process and across processes.

A read-through call goes::

    flight, leader = flights.begin(key)      # in this process (threads, asyncio tasks)
    leader:   take the cross-process lock (if any), polling ``recheck`` meanwhile and
              once more after taking it: what another process stored meanwhile is
              adopted and shared instead of calling again;
              then ``lead(duty)``: call, store, and settle ``duty`` exactly once:
              ``duty.finish(shared)`` (followers get ``shared``; ``None`` sends them
              back to start over) or ``duty.drop()`` (a stream abandoned half-way);
              an exception out of ``lead`` settles it too (followers get the exception,
              or start over after a cancellation/KeyboardInterrupt), and releases the lock
    follower: wait for the leader's ``shared`` and turn it into its own answer with
              ``follow(shared)``, which may return :data:`OWN_CALL` to make its own call
              instead (a shared upstream error, say); a follower whose leader gave up
              starts over, so one of them leads; one that waited ``wait_seconds`` calls
              on its own.

A leader never waits on itself: a call from the thread (or task) that leads an
identical call still in flight (holding the leader's stream unread) calls on its own,
without the lock.

Streams settle when they end, which may be long after ``lead`` returned. An async
leader whose stream is a *sync* iterator (an async function returning ``iter(...)``)
completes inside ``next()``, where nothing can be awaited: :meth:`AsyncLead.finish_soon`
runs the store and the lock release as a task on the leader's event loop (never the
blocking store on the loop itself); :meth:`AsyncReadThrough.drain` awaits such tasks.

:class:`ReadThrough` drives sync callers, :class:`AsyncReadThrough` async ones; they
share the flight table of their cache (:func:`flights_of`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, Literal, TypeVar

from ..errors import SemcacheError
from ..singleflight import AsyncRedisLock, Call, FlightAbandoned, RedisLock, SingleFlight
from .locks import arelease, release

__all__ = [
    "OWN_CALL",
    "AsyncLead",
    "AsyncReadThrough",
    "Lead",
    "OwnCall",
    "ReadThrough",
    "flights_of",
]

log = logging.getLogger("semcache")

S = TypeVar("S")  # what a leader shares with its followers
R = TypeVar("R")  # what a caller gets


class OwnCall(enum.Enum):
    """What ``follow`` returns when the shared answer is not for this caller."""

    OWN_CALL = "own_call"


#: ``follow(shared)`` returns this to make its own call instead of using ``shared``.
OWN_CALL: Final = OwnCall.OWN_CALL


def flights_of(owner: object) -> SingleFlight:
    """The flight table of ``owner`` (a cache): every function wrapped by it shares it."""
    d = vars(owner)
    flights = d.get("_semcache_flights")
    if flights is None:
        flights = d.setdefault("_semcache_flights", SingleFlight())
    assert isinstance(flights, SingleFlight)
    return flights


class _Duty(Generic[S]):
    """What a leader owes: settling its flight once, and releasing its lock."""

    def __init__(self, call: Call | None, key: str) -> None:
        self.call = call
        self.key = key
        self.token: str | None = None

    def share(self, shared: S | None) -> None:
        """Settle the flight: followers get ``shared``; ``None`` sends them back to start over."""
        if self.call is None:
            return
        if shared is None:
            self.call.abandon()
        else:
            self.call.resolve(shared)

    def fail(self, exc: BaseException) -> None:
        """Settle a failed leader's flight: followers get its exception, or start over."""
        if self.call is None:
            return
        if isinstance(exc, Exception):
            self.call.reject(exc)
        else:  # cancelled, KeyboardInterrupt, SystemExit: followers must not inherit them
            self.call.abandon()


class Lead(_Duty[S]):
    """A sync leader's duty (see the module docstring)."""

    def __init__(self, call: Call | None, key: str) -> None:
        super().__init__(call, key)
        self.lock: RedisLock | None = None

    def release(self) -> None:
        """Release the lock, once; a Redis failure is logged."""
        token, self.token = self.token, None
        release(self.lock, self.key, token)

    def finish(self, shared: S | None) -> None:
        """Settle the flight with ``shared`` and release the lock."""
        try:
            self.share(shared)
        finally:
            self.release()

    def drop(self, exc: BaseException | None = None) -> None:
        """Give up (a stream closed early or broken): release the lock, followers start over.

        Safe from any thread (a stream's ``__del__``).
        """
        self.release()
        self.share(None)


class AsyncLead(_Duty[S]):
    """An async leader's duty (see the module docstring); bound to the running loop."""

    def __init__(self, call: Call | None, key: str, background: set[asyncio.Task[None]]) -> None:
        super().__init__(call, key)
        self.lock: AsyncRedisLock | None = None
        self._loop = asyncio.get_running_loop()
        self._background = background

    async def release(self) -> None:
        """Release the lock, once; a Redis failure is logged."""
        token, self.token = self.token, None
        if token is not None:
            await arelease(self.lock, self.key, token)

    async def finish(self, shared: S | None) -> None:
        """Settle the flight with ``shared`` and release the lock."""
        try:
            self.share(shared)
        finally:
            await self.release()

    def drop(self, exc: BaseException | None = None) -> None:
        """Give up without awaiting: followers start over now, the lock is released on the loop.

        Safe from any thread (a stream's ``__del__``) and from a cancelled task.
        """
        self.share(None)
        if self.token is not None:
            self._spawn(self.release())

    def finish_soon(self, work: Callable[[], Awaitable[S | None]]) -> None:
        """Finish from code that cannot await: run ``work`` (the store), then :meth:`finish`, as a task.

        The leader's stream has been read to its end, so the leader's own task may now
        wait on the flight like any follower.
        """
        if self.call is not None:
            self.call.owner = None

        async def run() -> None:
            shared: S | None = None
            try:
                shared = await work()
            finally:
                await self.finish(shared)

        self._spawn(run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        def start() -> None:
            task = self._loop.create_task(coro)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        try:
            try:
                here = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                here = False
            if here:
                start()
            else:
                self._loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed: nothing can run there; the lock expires
            coro.close()
            self.share(None)


class ReadThrough(Generic[S]):
    """Lead or follow for sync callers (threads).

    Args:
        flights: the flight table (one per cache: :func:`flights_of`).
        lock: returns the cross-process lock, or ``None`` (called when a leader needs it).
        wait_seconds: how long a follower waits before it calls on its own.
        lock_wait_seconds: how long a leader waits for another process's lock.
        name: for log messages.
    """

    def __init__(
        self,
        flights: SingleFlight,
        *,
        lock: Callable[[], RedisLock | None] = lambda: None,
        wait_seconds: float | None = None,
        lock_wait_seconds: float | None = None,
        name: str = "semcache",
    ) -> None:
        self.flights = flights
        self._lock = lock
        self.wait_seconds = wait_seconds
        self.lock_wait_seconds = lock_wait_seconds
        self.name = name

    def run(
        self,
        key: str,
        *,
        lead: Callable[[Lead[S]], R],
        follow: Callable[[S], R | Literal[OwnCall.OWN_CALL]],
        recheck: Callable[[], S | None] | None = None,
        lock_key: str | None = None,
        single_flight: bool = True,
        use_lock: bool = True,
    ) -> R:
        """Make the call for ``key`` once for all concurrent callers (see the module docstring)."""
        lk = key if lock_key is None else lock_key
        while True:
            if not single_flight:
                return self._lead(None, lk, lead, follow, recheck, use_lock)
            call, leader = self.flights.begin(key)
            if leader:
                call.owner = threading.get_ident()
                return self._lead(call, lk, lead, follow, recheck, use_lock)
            if call.owner == threading.get_ident():
                # this thread leads that call (it holds the leader's stream unread, or is
                # inside the call): waiting would wait on itself, so it calls on its own,
                # without the lock its own call holds
                return self._lead(None, lk, lead, follow, recheck, False)
            try:
                shared = call.wait(self.wait_seconds)
            except FlightAbandoned:
                continue  # the leader gave up: start over, one of us leads
            except TimeoutError:
                log.warning("%s: gave up waiting for an identical call after %ss", self.name, self.wait_seconds)
                return self._lead(None, lk, lead, follow, recheck, use_lock)
            out = follow(shared)
            if out is OWN_CALL:
                return self._lead(None, lk, lead, follow, recheck, use_lock)
            return out

    def _lead(
        self,
        call: Call | None,
        lock_key: str,
        lead: Callable[[Lead[S]], R],
        follow: Callable[[S], R | Literal[OwnCall.OWN_CALL]],
        recheck: Callable[[], S | None] | None,
        use_lock: bool,
    ) -> R:
        duty: Lead[S] = Lead(call, lock_key)
        try:
            lock = self._lock() if use_lock else None
            if lock is not None:
                try:
                    token, found = lock.acquire_or_wait(
                        lock_key, recheck or _nothing, wait_seconds=self.lock_wait_seconds
                    )
                except SemcacheError as exc:
                    log.warning("%s: Redis lock unavailable (%s); calling without it", self.name, exc)
                    token, found = None, None
                duty.lock, duty.token = lock, token
                if found is not None:  # another process made the call and stored it
                    duty.share(found)
                    out = follow(found)
                    if out is not OWN_CALL:
                        return out
                    duty = Lead(None, lock_key)  # not in a form for us: call on our own
            return lead(duty)
        except BaseException as exc:
            # however the leader failed (in the lock wait or the store included), the key
            # must not stay in flight: later calls would each wait ``wait_seconds``
            duty.fail(exc)
            duty.release()
            raise


class AsyncReadThrough(Generic[S]):
    """Lead or follow for async callers (tasks); the arguments are those of :class:`ReadThrough`."""

    def __init__(
        self,
        flights: SingleFlight,
        *,
        lock: Callable[[], AsyncRedisLock | None] = lambda: None,
        wait_seconds: float | None = None,
        lock_wait_seconds: float | None = None,
        name: str = "semcache",
    ) -> None:
        self.flights = flights
        self._lock = lock
        self.wait_seconds = wait_seconds
        self.lock_wait_seconds = lock_wait_seconds
        self.name = name
        self._background: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Wait for the stores and lock releases that :meth:`AsyncLead.finish_soon` started on this loop."""
        loop = asyncio.get_running_loop()
        while True:
            pending = [t for t in self._background if t.get_loop() is loop and not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    async def run(
        self,
        key: str,
        *,
        lead: Callable[[AsyncLead[S]], Awaitable[R]],
        follow: Callable[[S], Awaitable[R | Literal[OwnCall.OWN_CALL]]],
        recheck: Callable[[], Awaitable[S | None]] | None = None,
        lock_key: str | None = None,
        single_flight: bool = True,
        use_lock: bool = True,
    ) -> R:
        """Async twin of :meth:`ReadThrough.run`."""
        lk = key if lock_key is None else lock_key
        while True:
            if not single_flight:
                return await self._lead(None, lk, lead, follow, recheck, use_lock)
            call, leader = self.flights.begin(key)
            if leader:
                call.owner = asyncio.current_task()
                return await self._lead(call, lk, lead, follow, recheck, use_lock)
            if call.owner is not None and call.owner is asyncio.current_task():
                # this task leads that call: never wait on ourselves (see ReadThrough.run)
                return await self._lead(None, lk, lead, follow, recheck, False)
            try:
                shared = await call.wait_async(self.wait_seconds)
            except FlightAbandoned:
                continue
            except TimeoutError:
                log.warning("%s: gave up waiting for an identical call after %ss", self.name, self.wait_seconds)
                return await self._lead(None, lk, lead, follow, recheck, use_lock)
            out = await follow(shared)
            if out is OWN_CALL:
                return await self._lead(None, lk, lead, follow, recheck, use_lock)
            return out

    async def _lead(
        self,
        call: Call | None,
        lock_key: str,
        lead: Callable[[AsyncLead[S]], Awaitable[R]],
        follow: Callable[[S], Awaitable[R | Literal[OwnCall.OWN_CALL]]],
        recheck: Callable[[], Awaitable[S | None]] | None,
        use_lock: bool,
    ) -> R:
        duty: AsyncLead[S] = AsyncLead(call, lock_key, self._background)
        try:
            lock = self._lock() if use_lock else None
            if lock is not None:
                try:
                    token, found = await lock.acquire_or_wait(
                        lock_key, recheck or _anothing, wait_seconds=self.lock_wait_seconds
                    )
                except SemcacheError as exc:
                    log.warning("%s: Redis lock unavailable (%s); calling without it", self.name, exc)
                    token, found = None, None
                duty.lock, duty.token = lock, token
                if found is not None:  # another process made the call and stored it
                    duty.share(found)
                    out = await follow(found)
                    if out is not OWN_CALL:
                        return out
                    duty = AsyncLead(None, lock_key, self._background)
            return await lead(duty)
        except BaseException as exc:
            # cancelled while waiting for the lock or storing included: see ReadThrough._lead;
            # the release runs on the loop, since a cancelled task should not await here
            duty.fail(exc)
            duty.drop()
            raise


def _nothing() -> None:
    return None


async def _anothing() -> None:
    return None
