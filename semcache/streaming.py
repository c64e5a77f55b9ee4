"""Record a live stream as it passes, and replay a recorded one. No I/O of its own.

Shared by the decorator and the HTTP sidecar. API::

    is_stream(obj) -> "sync" | "async" | None      # what a call returned
    RecordingStream(source, on_complete=..., on_abandon=...)       # sync iterator proxy
    AsyncRecordingStream(source, on_complete=..., on_abandon=...)  # async iterator proxy
    ReplayStream(items) / AsyncReplayStream(items)                 # a stored stream, live again

A recording stream yields the source's items unchanged and as they arrive; it keeps
them in order and calls ``on_complete(items)`` exactly once, and only when the source
is exhausted normally (before the consumer sees the end of the stream). A stream
that is closed early, garbage-collected unfinished, or whose source raises, calls
``on_abandon(exc_or_None)`` instead, once; the consumer still sees the source's
exception unchanged. An exception inside either callback is logged, never raised to
the consumer: recording must not break a working stream. ``on_complete`` of an
:class:`AsyncRecordingStream` may be a coroutine function; ``on_abandon`` must be a
plain function (it can run from ``__del__``, in any thread).

Attributes the proxies do not define (``response`` of an OpenAI ``Stream``, say)
are read from the source, so the live stream keeps its interface.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "AsyncRecordingStream",
    "AsyncReplayStream",
    "RecordingStream",
    "ReplayStream",
    "is_stream",
]

log = logging.getLogger("semcache")
T = TypeVar("T")

OnComplete = Callable[[list[Any]], Any]
OnAbandon = Callable[[BaseException | None], Any]


def is_stream(obj: Any) -> Literal["sync", "async"] | None:
    """Whether a call's result is a stream: an async iterator, a (sync) iterator, or neither.

    Strings, bytes, mappings and sequences are values, not streams; only objects
    that are themselves iterators (generators, OpenAI ``Stream``/``AsyncStream``,
    ``iter(...)``) count.
    """
    if isinstance(obj, (str, bytes, bytearray, memoryview, Mapping, list, tuple)):
        return None
    if hasattr(obj, "__anext__") and hasattr(obj, "__aiter__"):
        return "async"
    if hasattr(obj, "__next__") and hasattr(obj, "__iter__"):
        return "sync"
    return None


class _Recorder:
    """State shared by the sync and async recording proxies."""

    _source: Any
    _state: str

    def __init__(self, source: Any, on_complete: OnComplete, on_abandon: OnAbandon | None) -> None:
        self._source = source
        self._on_complete = on_complete
        self._on_abandon = on_abandon
        self._items: list[Any] = []
        self._state = "open"  # open -> complete | abandoned

    @property
    def items(self) -> list[Any]:
        """The items recorded so far (a copy)."""
        return list(self._items)

    @property
    def completed(self) -> bool:
        """Whether the source was exhausted normally (and ``on_complete`` ran)."""
        return self._state == "complete"

    @property
    def abandoned(self) -> bool:
        """Whether the stream ended any other way (closed early, error, collected)."""
        return self._state == "abandoned"

    def _abandon(self, exc: BaseException | None) -> None:
        if self._state != "open":
            return
        self._state = "abandoned"
        self._items = []
        if self._on_abandon is not None:
            try:
                self._on_abandon(exc)
            except Exception:  # a callback must not break the consumer
                log.warning("stream on_abandon callback failed", exc_info=True)

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found normally: keep the source's interface
        if name.startswith("__") or name in ("_source", "_state"):
            raise AttributeError(name)
        return getattr(self._source, name)

    def __del__(self) -> None:
        try:
            if getattr(self, "_state", None) == "open":
                self._abandon(None)
        except Exception:  # noqa: BLE001,S110 # pragma: no cover - interpreter shutdown
            pass


class RecordingStream(_Recorder, Generic[T]):
    """A sync iterator proxy that records items and reports how the stream ended.

    Args:
        source: the live stream (any iterator; an OpenAI ``Stream``).
        on_complete: called with the list of items once the source is exhausted.
        on_abandon: called with the source's exception, or ``None``, when it is not.
    """

    def __init__(self, source: Iterable[T], *, on_complete: OnComplete, on_abandon: OnAbandon | None = None) -> None:
        super().__init__(source, on_complete, on_abandon)
        self._it: Iterator[T] = iter(source)

    def __iter__(self) -> RecordingStream[T]:
        return self

    def __next__(self) -> T:
        if self._state != "open":
            raise StopIteration
        try:
            item = next(self._it)
        except StopIteration:
            self._complete()
            raise
        except BaseException as exc:
            self._abandon(exc)
            raise
        self._items.append(item)
        return item

    def _complete(self) -> None:
        self._state = "complete"
        items, self._items = self._items, []
        try:
            self._on_complete(items)
        except Exception:  # storing must not turn a finished stream into an error
            log.warning("stream on_complete callback failed", exc_info=True)

    def close(self) -> None:
        """Stop early: nothing is stored, and the source is closed."""
        self._abandon(None)
        closer = getattr(self._source, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> RecordingStream[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRecordingStream(_Recorder, Generic[T]):
    """An async iterator proxy that records items and reports how the stream ended.

    Args:
        source: the live stream (any async iterator; an OpenAI ``AsyncStream``).
        on_complete: called (and awaited, if it returns an awaitable) with the items
            once the source is exhausted.
        on_abandon: a plain function called with the source's exception, or ``None``.
    """

    def __init__(
        self,
        source: AsyncIterator[T],
        *,
        on_complete: Callable[[list[Any]], Any | Awaitable[Any]],
        on_abandon: OnAbandon | None = None,
    ) -> None:
        super().__init__(source, on_complete, on_abandon)
        self._it: AsyncIterator[T] = source.__aiter__() if hasattr(source, "__aiter__") else source

    def __aiter__(self) -> AsyncRecordingStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._state != "open":
            raise StopAsyncIteration
        try:
            item = await self._it.__anext__()
        except StopAsyncIteration:
            await self._complete()
            raise
        except BaseException as exc:  # CancelledError included: the stream did not finish
            self._abandon(exc)
            raise
        self._items.append(item)
        return item

    async def _complete(self) -> None:
        self._state = "complete"
        items, self._items = self._items, []
        try:
            result = self._on_complete(items)
            if inspect.isawaitable(result):
                await result
        except Exception:  # storing must not turn a finished stream into an error
            log.warning("stream on_complete callback failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop early: nothing is stored, and the source is closed."""
        self._abandon(None)
        for name in ("aclose", "close"):
            closer = getattr(self._source, name, None)
            if callable(closer):
                result = closer()
                if inspect.isawaitable(result):
                    await result
                return

    async def close(self) -> None:
        """Same as :meth:`aclose` (OpenAI's ``AsyncStream.close`` is awaitable too)."""
        await self.aclose()

    async def __aenter__(self) -> AsyncRecordingStream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class ReplayStream(Generic[T]):
    """A recorded stream served again: a sync iterator over the stored items."""

    def __init__(self, items: Iterable[T]) -> None:
        self._it = iter(list(items))

    def __iter__(self) -> ReplayStream[T]:
        return self

    def __next__(self) -> T:
        return next(self._it)

    def close(self) -> None:
        """Stop early (nothing to release)."""
        self._it = iter(())

    def __enter__(self) -> ReplayStream[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncReplayStream(Generic[T]):
    """A recorded stream served again: an async iterator over the stored items."""

    def __init__(self, items: Iterable[T]) -> None:
        self._it = iter(list(items))

    def __aiter__(self) -> AsyncReplayStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop early (nothing to release)."""
        self._it = iter(())

    async def close(self) -> None:
        """Same as :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> AsyncReplayStream[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
