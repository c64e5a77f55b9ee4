"""One call for many: collapse concurrent identical requests into one upstream call.

Shared by the decorator and the HTTP sidecar. API::

    flights = SingleFlight()                 # in-process, keyed by the exact key
    call, leader = flights.begin(key)
    if leader:                               # make the call, then settle it exactly once:
        call.resolve(value) | call.reject(exc) | call.abandon()
    else:
        value = call.wait(timeout)           # or: await call.wait_async(timeout)
        # raises the leader's exception, FlightAbandoned (try again) or TimeoutError

    value, shared = flights.do(key, fn)              # the whole dance for a plain call
    value, shared = await flights.do_async(key, afn)

    lock = RedisLock(redis_client, timeout_seconds=30)       # across processes
    token, found = lock.acquire_or_wait(key, poll=lambda: cache_lookup_or_None())
    # (token, None): we hold the lock -> call, store, then lock.release(key, token)
    # (None, found): another process stored it meanwhile -> use it
    # (None, None):  waited long enough -> call without the lock
    AsyncRedisLock(...)                      # the same, awaitable (redis.asyncio or a sync client)

A :class:`Call` is thread-safe and can be awaited from any asyncio loop and waited on
from any thread at once (the decorator's threads and the sidecar's event loop share
the same mechanism). Followers of a leader that failed get the leader's exception
(like Go's ``singleflight``); followers of a leader that gave up (a stream abandoned
halfway, a cancelled task, a ``KeyboardInterrupt``) get :class:`FlightAbandoned` and should start over, so one of them leads.

The Redis lock is ``SET key token NX PX timeout``: a holder that crashes blocks the
others only until the lock expires. Release deletes the key only while it still holds
our token: a WATCH/MULTI transaction on one server (so it also works where Lua is
unavailable), a Lua compare-and-delete of the one key on a Redis Cluster client.
Waiters poll the cache (``poll``) until the holder has stored, the lock is released
or expires, or ``wait_seconds`` pass. Driver errors become
:class:`~semcache.errors.BackendError`; callers should then go on without the lock.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import BackendError, BackendUnavailable, SemcacheError

__all__ = ["AsyncRedisLock", "Call", "FlightAbandoned", "RedisLock", "SingleFlight"]

T = TypeVar("T")


class FlightAbandoned(SemcacheError):
    """The leader of a call gave up without a result; the follower should try again."""


class Call:
    """One in-flight call that followers wait on; settled once by its leader."""

    def __init__(self, key: str, on_settle: Callable[[Call], None] | None = None) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._outcome: tuple[str, Any] | None = None
        self._on_settle = on_settle
        #: How many followers joined this call.
        self.followers = 0
        #: Who leads it (a thread id, an asyncio task), set by the leader: a follower
        #: with the same owner must not wait on it, since it would wait on itself.
        self.owner: Any = None

    @property
    def done(self) -> bool:
        """Whether the call was settled."""
        return self._outcome is not None

    def _settle(self, kind: str, payload: Any) -> bool:
        with self._lock:
            if self._outcome is not None:
                return False
            self._outcome = (kind, payload)
            waiters, self._waiters = self._waiters, []
        if self._on_settle is not None:
            self._on_settle(self)
        self._event.set()
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: nobody is waiting there any more
                pass
        return True

    def resolve(self, value: Any) -> bool:
        """Hand ``value`` to every follower; return False if the call was already settled."""
        return self._settle("value", value)

    def reject(self, exc: BaseException) -> bool:
        """Raise ``exc`` in every follower; return False if the call was already settled."""
        return self._settle("error", exc)

    def abandon(self) -> bool:
        """Release the followers without a result (they get :class:`FlightAbandoned`)."""
        return self._settle("abandoned", None)

    def _result(self) -> Any:
        assert self._outcome is not None
        kind, payload = self._outcome
        if kind == "value":
            return payload
        if kind == "error":
            raise payload
        raise FlightAbandoned(f"the call for {self.key} was abandoned by its leader")

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the leader settles; return its value or raise its exception.

        Raises:
            FlightAbandoned: the leader gave up; try again.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if not self._event.wait(timeout):
            raise TimeoutError(f"waited {timeout}s for the call for {self.key}")
        return self._result()

    async def wait_async(self, timeout: float | None = None) -> Any:
        """Await the leader's outcome without blocking the event loop (see :meth:`wait`)."""
        if self._outcome is None:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                pending = self._outcome is None
                if pending:
                    self._waiters.append((loop, fut))
            if pending:
                try:
                    await asyncio.wait_for(fut, timeout)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"waited {timeout}s for the call for {self.key}") from None
                finally:
                    with self._lock:
                        if (loop, fut) in self._waiters:
                            self._waiters.remove((loop, fut))
        return self._result()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SingleFlight:
    """In-process single-flight: at most one call in flight per key; the rest wait on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def _forget(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(call.key) is call:
                del self._calls[call.key]

    def begin(self, key: str) -> tuple[Call, bool]:
        """Join the call for ``key``, or start it: ``(call, True)`` means you lead it.

        The leader must settle the call (resolve, reject or abandon) exactly once; a
        settled call is forgotten at once, so the next ``begin`` starts a new one.
        """
        with self._lock:
            call = self._calls.get(key)
            if call is not None:
                call.followers += 1
                return call, False
            call = Call(key, self._forget)
            self._calls[key] = call
            return call, True

    def do(self, key: str, fn: Callable[[], T], *, timeout: float | None = None) -> tuple[T, bool]:
        """Run ``fn`` once for all concurrent callers of ``key``; return ``(value, shared)``.

        ``shared`` is True for followers, who get the leader's value (the same object)
        or its exception. A follower whose leader gave up starts over.
        """
        while True:
            call, leader = self.begin(key)
            if leader:
                try:
                    value = fn()
                except Exception as exc:
                    call.reject(exc)
                    raise
                except BaseException:
                    # KeyboardInterrupt, SystemExit: the leader's thread is going away, the
                    # followers are not; they start over (one of them leads), as async does
                    call.abandon()
                    raise
                call.resolve(value)
                return value, False
            try:
                return call.wait(timeout), True
            except FlightAbandoned:
                continue

    async def do_async(
        self, key: str, fn: Callable[[], Awaitable[T]], *, timeout: float | None = None
    ) -> tuple[T, bool]:
        """Async twin of :meth:`do` (``fn`` returns an awaitable)."""
        while True:
            call, leader = self.begin(key)
            if leader:
                try:
                    value = await fn()
                except BaseException as exc:
                    # a cancelled leader must not hand CancelledError to its followers
                    if isinstance(exc, asyncio.CancelledError):
                        call.abandon()
                    else:
                        call.reject(exc)
                    raise
                call.resolve(value)
                return value, False
            try:
                return await call.wait_async(timeout), True
            except FlightAbandoned:
                continue


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis
    except ImportError:  # pragma: no cover - a client was passed, so redis is installed
        return ()
    from redis.exceptions import RedisClusterException

    return (redis.RedisError, RedisClusterException)


def _translate(exc: BaseException) -> BackendError:
    import redis
    from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

    # (on a cluster: a master down or a slot failing over is an outage too)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, RedisClusterException)):
        return BackendUnavailable(f"Redis lock unavailable: {exc}")
    return BackendError(f"Redis lock error: {exc}")


#: KEYS: the lock. ARGV: our token. Deletes the lock only while it holds the token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _is_cluster(client: Any) -> bool:
    from .tiers.redis import is_cluster_client

    return is_cluster_client(client)


class _LockBase:
    def __init__(self, client: Any, *, prefix: str, timeout_seconds: float, poll_interval_seconds: float) -> None:
        if timeout_seconds <= 0 or poll_interval_seconds <= 0:
            from .errors import ConfigurationError

            raise ConfigurationError("lock timeout_seconds and poll_interval_seconds must be positive")
        self.client = client
        #: A Redis Cluster client: release is a Lua compare-and-delete, not WATCH/MULTI.
        self.cluster = _is_cluster(client)
        self.prefix = prefix
        self.timeout_seconds = float(timeout_seconds)
        self.poll_interval_seconds = float(poll_interval_seconds)

    def _k(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _interval(self) -> float:
        # jitter keeps many waiters from polling in lock-step
        return self.poll_interval_seconds * (0.5 + random.random())


class RedisLock(_LockBase):
    """A cross-process lock per exact key on Redis, with expiry (sync client).

    Args:
        client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` client.
        prefix: key prefix of the lock keys.
        timeout_seconds: the lock's expiry: the longest a crashed holder blocks others.
        poll_interval_seconds: how often waiters poll the cache and the lock.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "semcache:lock:",
        timeout_seconds: float = 30.0,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        super().__init__(
            client, prefix=prefix, timeout_seconds=timeout_seconds, poll_interval_seconds=poll_interval_seconds
        )
        self._errors = _redis_errors()

    def acquire(self, key: str) -> str | None:
        """Take the lock for ``key``; return its token, or ``None`` if someone holds it.

        Raises:
            BackendError: Redis failed.
        """
        token = uuid.uuid4().hex
        try:
            ok = self.client.set(self._k(key), token, nx=True, px=max(1, int(self.timeout_seconds * 1000)))
        except self._errors as exc:
            raise _translate(exc) from exc
        return token if ok else None

    def held(self, key: str) -> bool:
        """Whether anyone holds the lock for ``key``.

        Raises:
            BackendError: Redis failed.
        """
        try:
            return bool(self.client.exists(self._k(key)))
        except self._errors as exc:
            raise _translate(exc) from exc

    def release(self, key: str, token: str) -> bool:
        """Release the lock if it still holds ``token``; return whether it did.

        Raises:
            BackendError: Redis failed.
        """
        import redis

        k = self._k(key)
        if self.cluster:
            try:
                return bool(self.client.execute_command("EVAL", _RELEASE, 1, k, token))
            except self._errors as exc:
                raise _translate(exc) from exc
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(k)
                current = pipe.get(k)
                if current is None or _text(current) != token:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(k)
                pipe.execute()
                return True
        except redis.WatchError:
            return False  # it changed hands (expired and re-taken) meanwhile: not ours
        except self._errors as exc:
            raise _translate(exc) from exc

    def acquire_or_wait(
        self, key: str, poll: Callable[[], T | None], *, wait_seconds: float | None = None
    ) -> tuple[str | None, T | None]:
        """Take the lock, or wait for its holder's result.

        ``poll`` checks the cache and returns the stored result or ``None``; it runs
        after every attempt, a successful one included (double-checked). Returns
        ``(token, None)`` once we hold the lock, ``(None, result)`` when ``poll``
        found the holder's result, ``(None, None)`` when ``wait_seconds`` (default:
        the lock's timeout) passed.

        Raises:
            BackendError: Redis failed (go on without the lock).
        """
        deadline = time.monotonic() + (self.timeout_seconds if wait_seconds is None else wait_seconds)
        while True:
            token = self.acquire(key)
            found = poll()  # after taking the lock too: the holder before us may have just stored
            if token is not None:
                if found is not None:
                    self.release(key, token)
                    return None, found
                return token, None
            if found is not None:
                return None, found
            if time.monotonic() >= deadline:
                return None, None
            time.sleep(min(self._interval(), max(0.0, deadline - time.monotonic())))


class AsyncRedisLock(_LockBase):
    """Async twin of :class:`RedisLock`: a ``redis.asyncio`` client, or a sync one run in a thread."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "semcache:lock:",
        timeout_seconds: float = 30.0,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        super().__init__(
            client, prefix=prefix, timeout_seconds=timeout_seconds, poll_interval_seconds=poll_interval_seconds
        )
        #: True for a ``redis.asyncio`` client (awaited on the loop); a sync client runs in a thread.
        self.native = _is_async_client(client)
        self._threaded = None if self.native else RedisLock(
            client, prefix=prefix, timeout_seconds=timeout_seconds, poll_interval_seconds=poll_interval_seconds
        )
        self._errors = _redis_errors()

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        import anyio

        return await anyio.to_thread.run_sync(fn, *args)

    async def acquire(self, key: str) -> str | None:
        """Async twin of :meth:`RedisLock.acquire`."""
        if self._threaded is not None:
            return await self._thread(self._threaded.acquire, key)
        token = uuid.uuid4().hex
        try:
            ok = await self.client.set(self._k(key), token, nx=True, px=max(1, int(self.timeout_seconds * 1000)))
        except self._errors as exc:
            raise _translate(exc) from exc
        return token if ok else None

    async def held(self, key: str) -> bool:
        """Async twin of :meth:`RedisLock.held`."""
        if self._threaded is not None:
            return await self._thread(self._threaded.held, key)
        try:
            return bool(await self.client.exists(self._k(key)))
        except self._errors as exc:
            raise _translate(exc) from exc

    async def release(self, key: str, token: str) -> bool:
        """Async twin of :meth:`RedisLock.release`."""
        if self._threaded is not None:
            return await self._thread(self._threaded.release, key, token)
        import redis

        k = self._k(key)
        if self.cluster:
            try:
                return bool(await self.client.execute_command("EVAL", _RELEASE, 1, k, token))
            except self._errors as exc:
                raise _translate(exc) from exc
        try:
            async with self.client.pipeline() as pipe:
                await pipe.watch(k)
                current = await pipe.get(k)
                if current is None or _text(current) != token:
                    await pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(k)
                await pipe.execute()
                return True
        except redis.WatchError:
            return False
        except self._errors as exc:
            raise _translate(exc) from exc

    async def acquire_or_wait(
        self, key: str, poll: Callable[[], Any], *, wait_seconds: float | None = None
    ) -> tuple[str | None, Any]:
        """Async twin of :meth:`RedisLock.acquire_or_wait` (``poll`` may be async)."""
        import anyio

        deadline = time.monotonic() + (self.timeout_seconds if wait_seconds is None else wait_seconds)
        while True:
            token = await self.acquire(key)
            found = poll()  # after taking the lock too: the holder before us may have just stored
            if inspect.isawaitable(found):
                found = await found
            if token is not None:
                if found is not None:
                    await self.release(key, token)
                    return None, found
                return token, None
            if found is not None:
                return None, found
            if time.monotonic() >= deadline:
                return None, None
            await anyio.sleep(min(self._interval(), max(0.0, deadline - time.monotonic())))


def _is_async_client(client: Any) -> bool:
    try:
        import redis.asyncio
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    except ImportError:  # pragma: no cover
        return False
    return isinstance(client, (redis.asyncio.Redis, AsyncRedisCluster))


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
