"""A small OpenAI-compatible stand-in upstream for tests: real HTTP on a loopback port.

The real ``openai`` client talks to it as to the API, so tests see the SDK's own
types, streaming and errors. Use it as a context manager::

    from tests.upstream import StandInUpstream

    with StandInUpstream(delay_seconds=0.3) as up:
        client = openai.OpenAI(base_url=up.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="stand-in-1", messages=[...])
        assert up.calls == 1

Endpoints: ``POST /v1/chat/completions`` (``stream=True`` answers with SSE
``data: {chunk}`` events and ``data: [DONE]``; ``stream_options.include_usage``
adds a usage chunk) and ``GET /v1/models``. The answer is
``"answer {n}: {last user message}"`` where ``n`` counts calls, so a replayed
response is told apart from a fresh one. Markers in the last user message:

* ``[[error:500]]`` (any status): an OpenAI-style error body with that status;
* ``[[filter]]``: ``finish_reason="content_filter"``;
* ``[[empty]]``: an empty answer;
* ``[[cut]]``: a stream that breaks off after two chunks (connection dropped).

Attributes: ``calls`` (requests to chat/completions), ``requests`` (their JSON
bodies), ``headers`` (their headers, names lower-case), ``delay_seconds`` (before
the first byte), ``chunk_delay_seconds`` (between stream chunks); all may be changed
while it runs. ``reset()`` zeroes them.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

__all__ = ["StandInUpstream"]

_ERROR = re.compile(r"\[\[error:(\d{3})\]\]")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class StandInUpstream:
    """An OpenAI-compatible chat completions server in a background thread (uvicorn)."""

    def __init__(
        self,
        *,
        delay_seconds: float = 0.2,
        chunk_delay_seconds: float = 0.01,
        model: str = "stand-in-1",
        port: int | None = None,
    ) -> None:
        self.delay_seconds = delay_seconds
        self.chunk_delay_seconds = chunk_delay_seconds
        self.model = model
        self.port = port or _free_port()
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give the OpenAI client (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        """Forget the calls counted so far."""
        with self._lock:
            self.calls = 0
            self.requests.clear()
            self.headers.clear()

    # -- the app -------------------------------------------------------------
    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]})

        async def chat(request: Request) -> Any:
            body = await request.json()
            with self._lock:
                self.calls += 1
                n = self.calls
                self.requests.append(body)
                self.headers.append({k.lower(): v for k, v in request.headers.items()})
            await asyncio.sleep(self.delay_seconds)
            messages = body.get("messages") or []
            user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
            m = _ERROR.search(user)
            if m:
                status = int(m.group(1))
                return JSONResponse(
                    {"error": {"message": f"stand-in error {status}", "type": "server_error", "param": None, "code": str(status)}},
                    status_code=status,
                )
            answer = "" if "[[empty]]" in user else f"answer {n}: {user}"
            finish = "content_filter" if "[[filter]]" in user else "stop"
            usage = {
                "prompt_tokens": sum(_words(_text_of(x.get("content"))) for x in messages),
                "completion_tokens": _words(answer),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            head = {"id": f"chatcmpl-standin-{n}", "created": int(time.time()), "model": body.get("model") or self.model}
            if not body.get("stream"):
                return JSONResponse(
                    {
                        **head,
                        "object": "chat.completion",
                        "system_fingerprint": "fp_standin",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer, "refusal": None},
                                "finish_reason": finish,
                                "logprobs": None,
                            }
                        ],
                        "usage": usage,
                    }
                )
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            cut = "[[cut]]" in user
            return StreamingResponse(
                self._events(head, answer, finish, usage if include_usage else None, cut),
                media_type="text/event-stream",
            )

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])

    async def _events(
        self, head: dict[str, Any], answer: str, finish: str, usage: dict[str, int] | None, cut: bool
    ) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {**head, "object": "chat.completion.chunk", "system_fingerprint": "fp_standin", "choices": choices, **extra}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}])
        pieces = re.findall(r"\S+\s*", answer)
        for i, piece in enumerate(pieces):
            if cut and i == 2:
                raise ConnectionResetError("stand-in stream cut")  # uvicorn drops the connection
            await asyncio.sleep(self.chunk_delay_seconds)
            yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}])
        if usage is not None:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> StandInUpstream:
        """Start serving; return once the port accepts connections."""
        import uvicorn

        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="stand-in-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in upstream did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> StandInUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
