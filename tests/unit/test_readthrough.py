"""The read-through shared by the decorator and the proxy: lead or follow, locks, re-check."""

from __future__ import annotations

import asyncio
import threading

import pytest

from semcache.readthrough import OWN_CALL, AsyncReadThrough, ReadThrough, cacheable, finished, flights_of
from semcache.singleflight import SingleFlight


def _on_join(flights: SingleFlight, joined=None):
    """An event (a threading one, or the asyncio one given) set when a caller joins or starts a flight."""
    joined = threading.Event() if joined is None else joined
    begin = flights.begin

    def counting(key):
        out = begin(key)
        joined.set()
        return out

    flights.begin = counting  # type: ignore[method-assign]
    return joined


class _FoundLock:
    """A stand-in cross-process lock whose holder stored the answer meanwhile."""

    def __init__(self) -> None:
        self.polls = 0

    def acquire_or_wait(self, key, poll, *, wait_seconds=None):
        self.polls += 1
        return None, poll()


class _HeldLock:
    """A stand-in lock we get at once; the re-check after taking it finds nothing."""

    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    def acquire_or_wait(self, key, poll, *, wait_seconds=None):
        assert poll() is None  # re-checked after taking it
        return "token", None

    def release(self, key, token):
        self.released.append((key, token))
        return True


def test_what_another_process_stored_meanwhile_is_adopted_not_called_again() -> None:
    lock = _FoundLock()
    rt: ReadThrough[str] = ReadThrough(SingleFlight(), lock=lambda: lock)
    calls: list[int] = []
    out = rt.run(
        "k",
        lead=lambda duty: calls.append(1) or "called",
        follow=lambda shared: f"adopted {shared}",
        recheck=lambda: "stored elsewhere",
    )
    assert out == "adopted stored elsewhere" and calls == [] and lock.polls == 1


def test_the_leader_releases_the_lock_it_took_once_settled() -> None:
    lock = _HeldLock()
    rt: ReadThrough[str] = ReadThrough(SingleFlight(), lock=lambda: lock)

    def lead(duty):
        duty.finish("value")
        return "value"

    assert rt.run("k", lead=lead, follow=lambda s: s, recheck=lambda: None) == "value"
    assert lock.released == [("k", "token")]


def test_a_failing_leader_releases_the_lock_and_its_followers_get_the_exception() -> None:
    lock = _HeldLock()
    flights = SingleFlight()
    rt: ReadThrough[str] = ReadThrough(flights, lock=lambda: lock)
    started, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def lead(duty):
        started.set()
        go.wait(5)
        raise ValueError("upstream said no")

    def run() -> None:
        try:
            rt.run("k", lead=lead, follow=lambda s: s)
        except ValueError as exc:
            errors.append(exc)

    leader = threading.Thread(target=run)
    leader.start()
    started.wait(5)
    joined = _on_join(flights)
    follower = threading.Thread(target=run)
    follower.start()
    joined.wait(5)
    go.set()
    leader.join(5)
    follower.join(5)
    assert len(errors) == 2 and lock.released == [("k", "token")] and len(flights) == 0


def test_a_follower_may_make_its_own_call_instead_of_using_the_shared_answer() -> None:
    flights = SingleFlight()
    call, leader = flights.begin("k")
    assert leader
    rt: ReadThrough[str] = ReadThrough(flights)
    done = threading.Event()
    out: list[str] = []

    def follower() -> None:
        out.append(rt.run("k", lead=lambda duty: "own answer", follow=lambda s: OWN_CALL))
        done.set()

    t = threading.Thread(target=follower)
    t.start()
    call.resolve("leader's error")
    done.wait(5)
    t.join(5)
    assert out == ["own answer"]


async def test_followers_of_a_stream_wait_for_its_end_and_a_dropped_stream_sends_them_back() -> None:
    flights = SingleFlight()
    rt: AsyncReadThrough[str] = AsyncReadThrough(flights)
    duties: list = []
    leading = asyncio.Event()

    async def lead(duty):
        duties.append(duty)
        leading.set()
        return f"stream {len(duties)}"  # settled later, when the stream ends

    async def follow(shared):
        return f"replay of {shared}"

    first = asyncio.create_task(rt.run("k", lead=lead, follow=follow))
    await leading.wait()
    assert await first == "stream 1"
    joined = _on_join(flights, asyncio.Event())
    follower = asyncio.create_task(rt.run("k", lead=lead, follow=follow))
    await joined.wait()
    leading.clear()
    duties[0].drop()  # the leader's client went away: the follower starts over and leads
    await leading.wait()
    assert await follower == "stream 2"
    duties[1].share("chunks")
    assert len(flights) == 0


async def test_a_cancelled_async_leader_never_hands_its_cancellation_to_followers() -> None:
    flights = SingleFlight()
    rt: AsyncReadThrough[str] = AsyncReadThrough(flights)
    started = asyncio.Event()
    calls: list[int] = []

    async def lead(duty):
        calls.append(1)
        if len(calls) == 1:
            started.set()
            await asyncio.Event().wait()  # until cancelled
        await duty.finish("answer")
        return "answer"

    async def follow(shared):
        return shared

    leader = asyncio.create_task(rt.run("k", lead=lead, follow=follow))
    await started.wait()
    joined = _on_join(flights, asyncio.Event())
    follower = asyncio.create_task(rt.run("k", lead=lead, follow=follow))
    await joined.wait()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await asyncio.wait_for(follower, 5) == "answer" and len(calls) == 2


def test_flights_are_per_cache_and_shared_by_its_functions() -> None:
    class Owner:
        pass

    a, b = Owner(), Owner()
    assert flights_of(a) is flights_of(a) and flights_of(a) is not flights_of(b)


def test_cacheability_rule_and_finished() -> None:
    assert cacheable("an answer", stream=False) and not cacheable("  ", stream=False)
    assert not cacheable("x", stream=False, rule=lambda v: 1 / 0)  # a failing rule: not stored
    assert finished({"choices": [{"finish_reason": "stop"}]})
    assert not finished({"choices": [{"finish_reason": None}]}) and not finished({"choices": []})
