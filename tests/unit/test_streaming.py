"""Recording and replaying streams: complete, abandoned, failed, sync and async."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from semcache.streaming import (
    AsyncRecordingStream,
    AsyncReplayStream,
    RecordingStream,
    ReplayStream,
    is_stream,
)


class Log:
    def __init__(self) -> None:
        self.completed: list[list[object]] = []
        self.abandoned: list[BaseException | None] = []

    def complete(self, items: list[object]) -> None:
        self.completed.append(items)

    def abandon(self, exc: BaseException | None) -> None:
        self.abandoned.append(exc)


def gen(n: int, fail_at: int | None = None) -> Iterator[str]:
    for i in range(n):
        if i == fail_at:
            raise ConnectionError("upstream dropped")
        yield f"tok{i}"


def test_is_stream() -> None:
    async def agen() -> AsyncIterator[int]:
        yield 1

    assert is_stream(iter([1])) == "sync"
    assert is_stream(gen(1)) == "sync"
    assert is_stream(agen()) == "async"
    for value in ("text", b"bytes", {"a": 1}, [1, 2], (1,), 3, None):
        assert is_stream(value) is None


def test_complete_stream_records_in_order() -> None:
    log = Log()
    stream = RecordingStream(gen(3), on_complete=log.complete, on_abandon=log.abandon)
    assert list(stream) == ["tok0", "tok1", "tok2"]
    assert log.completed == [["tok0", "tok1", "tok2"]] and log.abandoned == []
    assert stream.completed and list(stream) == []


def test_abandoned_stream_calls_on_abandon_only() -> None:
    log = Log()
    stream = RecordingStream(gen(5), on_complete=log.complete, on_abandon=log.abandon)
    assert next(stream) == "tok0"
    stream.close()
    assert log.completed == [] and log.abandoned == [None]
    assert stream.abandoned


def test_stream_dropped_unfinished_is_abandoned() -> None:
    log = Log()
    stream = RecordingStream(gen(5), on_complete=log.complete, on_abandon=log.abandon)
    for _ in stream:
        break
    del stream
    if not log.abandoned:  # freed at once by reference counting; a cycle needs the collector
        gc.collect()  # (a full collection costs ~0.3 s in this suite's heap: only if needed)
    assert log.completed == [] and log.abandoned == [None]


def test_source_error_reaches_consumer_unchanged() -> None:
    log = Log()
    stream = RecordingStream(gen(5, fail_at=2), on_complete=log.complete, on_abandon=log.abandon)
    with pytest.raises(ConnectionError, match="upstream dropped"):
        list(stream)
    assert log.completed == [] and isinstance(log.abandoned[0], ConnectionError)


def test_failing_callback_does_not_break_the_stream(caplog) -> None:
    def broken(items: list[object]) -> None:
        raise RuntimeError("store failed")

    assert list(RecordingStream(gen(2), on_complete=broken)) == ["tok0", "tok1"]
    assert "on_complete callback failed" in caplog.text


def test_source_attributes_are_proxied() -> None:
    class Source:
        response = "the http response"

        def __init__(self) -> None:
            self.closed = False
            self._it = iter([1, 2])

        def __iter__(self) -> Iterator[int]:
            return self._it

        def __next__(self) -> int:
            return next(self._it)

        def close(self) -> None:
            self.closed = True

    src = Source()
    with RecordingStream(src, on_complete=lambda items: None) as stream:
        assert stream.response == "the http response"
    assert src.closed


def test_replay_stream() -> None:
    with ReplayStream(["a", "b"]) as stream:
        assert next(stream) == "a"
        assert list(stream) == ["b"]


async def agen(n: int, fail_at: int | None = None) -> AsyncIterator[str]:
    for i in range(n):
        if i == fail_at:
            raise ConnectionError("upstream dropped")
        yield f"tok{i}"


async def test_async_complete_with_async_callback() -> None:
    seen: list[list[object]] = []

    async def store(items: list[object]) -> None:
        seen.append(items)

    stream = AsyncRecordingStream(agen(3), on_complete=store)
    assert [x async for x in stream] == ["tok0", "tok1", "tok2"]
    assert seen == [["tok0", "tok1", "tok2"]]


async def test_async_abandon_and_error() -> None:
    log = Log()
    stream = AsyncRecordingStream(agen(5), on_complete=log.complete, on_abandon=log.abandon)
    assert await stream.__anext__() == "tok0"
    await stream.aclose()
    assert log.completed == [] and log.abandoned == [None]

    log = Log()
    stream = AsyncRecordingStream(agen(5, fail_at=1), on_complete=log.complete, on_abandon=log.abandon)
    with pytest.raises(ConnectionError):
        async for _ in stream:
            pass
    assert log.completed == [] and isinstance(log.abandoned[0], ConnectionError)


async def test_async_replay_stream() -> None:
    async with AsyncReplayStream([1, 2, 3]) as stream:
        assert [x async for x in stream] == [1, 2, 3]
