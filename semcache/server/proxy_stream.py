"""The proxy's streams: relaying an upstream stream, leading a streamed flight, replaying.

* :func:`relay` — the upstream's server-sent chunks passed on live, recorded, and
  on ``[DONE]`` handed to ``save`` (when the answer may be stored) and shared with
  the flight's followers as :class:`Streamed`; a stream that breaks off ends with an
  in-band error event, stores nothing and releases the followers to start over;
* :func:`lead` — a streamed flight's leader: the stream settles the flight when it
  ends, and a leader cancelled before its stream started releases its followers;
* :func:`replay` — a completion (a hit, or a leader's answer) cut into chunks again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse

from ..errors import SemcacheError
from ..openai_compat import chunks_to_completion, completion_to_chunks
from ..readthrough import AsyncLead, cacheable, finished
from ..streaming import AsyncRecordingStream
from .proxy_convert import sse
from .proxy_support import ProxyHost
from .proxy_upstream import Upstream, open_stream, pass_back

__all__ = ["Save", "Shared", "Streamed", "lead", "relay", "replay"]

log = logging.getLogger("semcache.server")


@dataclass(frozen=True, slots=True)
class Streamed:
    """A streamed upstream answer that ended with ``[DONE]``: its chunks, shareable."""

    chunks: tuple[dict[str, Any], ...]
    headers: dict[str, str] = field(default_factory=dict)


#: What a leader shares with its followers.
Shared = Upstream | Streamed

#: Stores a finished, cacheable completion.
Save = Callable[[dict[str, Any]], Awaitable[None]]


class _BrokenStream(Exception):
    """The upstream's stream broke off or sent garbage."""


def replay(
    completion: dict[str, Any], headers: dict[str, str], include_usage: bool
) -> StreamingResponse:
    """``completion`` as a stream of chunks, ending with ``[DONE]``."""

    async def events() -> AsyncIterator[bytes]:
        for chunk in completion_to_chunks(completion, include_usage=include_usage):
            yield sse(chunk)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def lead(
    host: ProxyHost,
    duty: AsyncLead[Shared],
    payload: dict[str, Any],
    headers: dict[str, str],
    marker: dict[str, str],
    save: Save | None,
) -> Response:
    """Lead a streamed flight: the stream settles ``duty`` when it ends (or breaks off)."""
    settled = False
    try:
        response = await relay(host, payload, headers, marker, save=save, duty=duty)
        settled = True
        return response
    finally:
        if not settled:
            duty.drop()  # cancelled before the stream started: followers start over


async def relay(
    host: ProxyHost,
    payload: dict[str, Any],
    headers: dict[str, str],
    marker: dict[str, str],
    *,
    save: Save | None,
    duty: AsyncLead[Shared] | None,
) -> Response:
    """Stream one upstream call to the caller; ``save`` stores its answer, ``duty`` shares it."""
    opened = await open_stream(host, payload, headers)
    if isinstance(opened, Upstream):
        if duty is not None:
            await duty.finish(opened)  # the followers ask upstream themselves
        return Response(
            opened.body, status_code=opened.status, headers={**opened.headers, **marker}
        )
    resp = opened
    passed_back = pass_back(resp.headers)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        """The upstream's SSE events as chunk dicts; an unfinished stream is an error."""
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # comments, keep-alives, event names
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise _BrokenStream("the upstream sent an event that is not JSON") from exc
        raise _BrokenStream("the upstream stream ended without [DONE]")

    async def store(items: list[Any]) -> None:
        if save is None or not cacheable(items, stream=True, name="proxy"):
            return
        try:
            completion = chunks_to_completion(items)
        except SemcacheError as exc:  # chunks the check let through but cannot assemble
            log.warning("could not assemble a streamed answer (%s); not storing it", exc)
            return
        if not finished(completion):
            # [DONE] without a finish_reason: the upstream may have cut the answer short
            log.warning("a streamed answer ended without a finish_reason; not storing it")
            return
        await save(completion)

    async def on_complete(items: list[Any]) -> None:
        try:
            await store(items)
        finally:
            if duty is not None:  # a whole stream is shared, stored or not
                await duty.finish(Streamed(tuple(items), passed_back))

    recording = AsyncRecordingStream(
        chunks(), on_complete=on_complete, on_abandon=None if duty is None else duty.drop
    )

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in recording:
                yield sse(chunk)
            yield b"data: [DONE]\n\n"
        except (_BrokenStream, httpx.HTTPError) as exc:
            # the status line is long gone: tell the client in-band, store nothing
            log.warning("upstream stream failed (%s); nothing stored", exc)
            yield sse(
                {
                    "error": {
                        "message": f"upstream stream failed: {exc}",
                        "type": "upstream_error",
                        "code": 502,
                    }
                }
            )
        finally:
            if not recording.completed:
                await recording.aclose()
            await resp.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={**passed_back, **marker, "content-type": "text/event-stream"},
    )
