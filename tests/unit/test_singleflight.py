"""In-process single-flight (threads and asyncio) and the Redis lock (fakeredis)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from semcache.singleflight import AsyncRedisLock, FlightAbandoned, RedisLock, SingleFlight
from tests._sync import FlightWatch


def test_threads_share_one_call() -> None:
    flights = SingleFlight()
    watch = FlightWatch(flights)
    calls = 0
    gate = threading.Event()

    def work() -> str:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return "answer"

    results: list[tuple[str, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(flights.do("k", work))) for _ in range(20)]
    for t in threads:
        t.start()
    watch.wait_followers(19)  # the leader is held in work() meanwhile
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == 1
    assert sorted(r[1] for r in results) == [False] + [True] * 19
    assert {r[0] for r in results} == {"answer"}
    assert len(flights) == 0


def test_followers_get_the_leaders_exception() -> None:
    flights = SingleFlight()
    call, leader = flights.begin("k")
    follower, led = flights.begin("k")
    assert leader and not led and follower is call
    boom = RuntimeError("upstream 500")
    call.reject(boom)
    with pytest.raises(RuntimeError) as info:
        follower.wait(1)
    assert info.value is boom
    # settled calls are forgotten: the next caller leads a new one
    _, leader_again = flights.begin("k")
    assert leader_again


def test_abandoned_call_releases_followers() -> None:
    flights = SingleFlight()
    call, _ = flights.begin("k")
    other, _ = flights.begin("k")
    assert call.abandon()
    assert not call.resolve("late")  # first settlement wins
    with pytest.raises(FlightAbandoned):
        other.wait(1)


def test_interrupted_sync_leader_abandons() -> None:
    flights = SingleFlight()
    started, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def interrupted() -> int:
        started.set()
        go.wait(5)
        raise KeyboardInterrupt

    def lead() -> None:
        try:
            flights.do("k", interrupted)
        except KeyboardInterrupt as exc:
            outcome.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    started.wait(5)
    call, led = flights.begin("k")
    assert not led
    go.set()
    with pytest.raises(FlightAbandoned):  # not the leader's KeyboardInterrupt
        call.wait(5)
    leader.join(5)
    assert len(outcome) == 1 and len(flights) == 0


def test_wait_times_out() -> None:
    call, _ = SingleFlight().begin("k")
    with pytest.raises(TimeoutError):
        call.wait(0.01)  # the timeout is what is tested: nobody ever settles this call


async def test_asyncio_tasks_share_one_call() -> None:
    flights = SingleFlight()
    joined = FlightWatch(flights).followers_joined_async(19)
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.wait_for(joined.wait(), 5)  # every other task waits on this call
        return 42

    results = await asyncio.gather(*(flights.do_async("k", work) for _ in range(20)))
    assert calls == 1
    assert [v for v, _ in results] == [42] * 20
    assert sum(shared for _, shared in results) == 19


async def test_async_waiter_woken_from_another_thread() -> None:
    flights = SingleFlight()
    call, _ = flights.begin("k")
    follower, _ = flights.begin("k")
    # started by the loop once this task is suspended in wait_async, its waiter registered
    resolver = threading.Thread(target=call.resolve, args=("from a thread",))
    asyncio.get_running_loop().call_soon(resolver.start)
    assert await follower.wait_async(2) == "from a thread"
    resolver.join(5)


async def test_async_wait_times_out() -> None:
    call, _ = SingleFlight().begin("k")
    with pytest.raises(TimeoutError):
        await call.wait_async(0.01)  # the timeout is what is tested


async def test_cancelled_async_leader_abandons() -> None:
    flights = SingleFlight()
    started = asyncio.Event()

    async def slow() -> int:
        started.set()
        await asyncio.get_running_loop().create_future()  # never done: the task is cancelled
        return 1

    leader = asyncio.create_task(flights.do_async("k", slow))
    await started.wait()
    call, led = flights.begin("k")
    assert not led
    leader.cancel()
    with pytest.raises(FlightAbandoned):
        await call.wait_async(1)


# -- the Redis lock ------------------------------------------------------------


@pytest.fixture
def redis_client():
    fakeredis = pytest.importorskip("fakeredis")
    return fakeredis.FakeRedis()


def test_lock_acquire_release_token_checked(redis_client) -> None:
    lock = RedisLock(redis_client, timeout_seconds=5)
    token = lock.acquire("k")
    assert token and lock.held("k")
    assert lock.acquire("k") is None
    assert not lock.release("k", "not-my-token")
    assert lock.held("k")
    assert lock.release("k", token)
    assert not lock.held("k")


def test_lock_expires_so_a_crashed_holder_blocks_briefly(redis_client) -> None:
    # the expiry is what is tested: the waiter really waits it out (fakeredis expires
    # keys on the wall clock), so it is kept short
    lock = RedisLock(redis_client, timeout_seconds=0.05, poll_interval_seconds=0.01)
    assert lock.acquire("k")  # the "crashed" holder never releases
    t0 = time.monotonic()
    token, found = lock.acquire_or_wait("k", poll=lambda: None, wait_seconds=5)
    assert token is not None and found is None
    assert time.monotonic() - t0 < 2


def test_lock_waiter_sees_the_holders_result(redis_client) -> None:
    lock = RedisLock(redis_client, timeout_seconds=5, poll_interval_seconds=0.01)
    assert lock.acquire("k")
    stored: dict[str, str] = {}
    polled = threading.Event()

    def poll() -> str | None:
        polled.set()
        return stored.get("k")

    def holder() -> None:  # stores its result once the waiter has found nothing
        assert polled.wait(5)
        stored["k"] = "value"

    t = threading.Thread(target=holder)
    t.start()
    token, found = lock.acquire_or_wait("k", poll=poll, wait_seconds=5)
    t.join(5)
    assert token is None and found == "value"


def test_lock_wait_gives_up_after_wait_seconds(redis_client) -> None:
    lock = RedisLock(redis_client, timeout_seconds=30, poll_interval_seconds=0.01)
    assert lock.acquire("k")
    # the give-up is what is tested: the waiter really waits wait_seconds (kept short)
    assert lock.acquire_or_wait("k", poll=lambda: None, wait_seconds=0.05) == (None, None)


def test_lock_translates_driver_errors() -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from semcache.errors import BackendUnavailable

    # nothing listens on port 1: refused at once; no retries (the default retries with
    # back-off for seconds)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(BackendUnavailable):
        RedisLock(dead).acquire("k")


async def test_async_lock_over_a_sync_client(redis_client) -> None:
    lock = AsyncRedisLock(redis_client, timeout_seconds=5, poll_interval_seconds=0.02)
    token = await lock.acquire("k")
    assert token and await lock.held("k")

    async def poll() -> str | None:
        return None

    assert await lock.acquire_or_wait("k", poll, wait_seconds=0.05) == (None, None)  # gives up (tested)
    assert await lock.release("k", token)
    assert not await lock.held("k")


async def test_async_lock_native_client() -> None:
    fakeredis = pytest.importorskip("fakeredis")
    lock = AsyncRedisLock(fakeredis.FakeAsyncRedis(), timeout_seconds=5)
    token = await lock.acquire("k")
    assert token and await lock.acquire("k") is None
    assert not await lock.release("k", "other")
    assert await lock.release("k", token)
    assert await lock.acquire("k")
