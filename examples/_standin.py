"""A tiny OpenAI-compatible server for the examples, so they run offline.

It answers ``POST /v1/chat/completions`` (plain JSON, or server-sent events when
``stream`` is true) after a delay that plays the part of a real model's latency,
and counts the calls it gets. Standard library only; not for production.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandIn:
    """Serve a fake model on a free loopback port: ``with StandIn() as up: up.base_url, up.calls``."""

    def __init__(self, delay_seconds: float = 0.8) -> None:
        self.delay_seconds = delay_seconds
        self.calls = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI client's ``base_url`` for this server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, body: dict[str, Any]) -> tuple[str, dict[str, int]]:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_seconds)
        question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        answer = f"A thoughtful answer to: {question}"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return answer, usage

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep the example's output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer, usage = standin._answer(body)
                head = {"id": f"chatcmpl-{standin.calls}", "created": int(time.time()), "model": body["model"]}
                if not body.get("stream"):
                    data = json.dumps(
                        {
                            **head,
                            "object": "chat.completion",
                            "choices": [
                                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                            ],
                            "usage": usage,
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                words = [w + " " for w in answer.split(" ")]
                words[-1] = words[-1].rstrip()
                deltas = [{"role": "assistant", "content": ""}] + [{"content": w} for w in words]
                for i, delta in enumerate(deltas + [{}]):
                    chunk = {
                        **head,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == len(deltas) else None}],
                    }
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(0.02)
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        return Handler
