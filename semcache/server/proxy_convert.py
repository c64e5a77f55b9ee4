"""The proxy's conversions between HTTP, the cache and the OpenAI formats.

* :class:`CacheOptions` — the per-request cache controls read from the request
  headers (``Cache-Control``, ``X-Semcache-Tags``, ``X-Semcache-TTL``);
* :func:`hit_headers` — the ``X-Semcache-*`` response headers of a hit;
* :func:`as_completion` — a stored value (a completion, recorded chunks or a plain
  string stored through the JSON API) as a ``chat.completion`` dict;
* :func:`completion_metadata` — what is stored alongside a completion (format,
  usage, cost);
* :func:`wants_usage`, :func:`sse` — the streamed form's request option and framing;
* :func:`error_json`, :func:`error_bytes` — the OpenAI-style error body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from ..config import UNSET
from ..errors import InvalidInputError, SemcacheError
from ..openai_compat import (
    FORMAT_CHAT_CHUNK,
    FORMAT_CHAT_COMPLETION,
    FORMAT_KEY,
    STREAM_KEY,
    chunks_to_completion,
    model_of,
    usage_of,
)
from ..types import Hit

__all__ = [
    "JSON",
    "CacheOptions",
    "as_completion",
    "completion_metadata",
    "error_bytes",
    "error_json",
    "hit_headers",
    "sse",
    "wants_usage",
]

#: The content type of a JSON answer the proxy makes itself.
JSON = {"content-type": "application/json"}


class CacheOptions:
    """Per-request cache controls from the request headers."""

    def __init__(self, request: Request) -> None:
        cc = {d.strip().lower() for d in request.headers.get("cache-control", "").split(",")}
        self.lookup = "no-cache" not in cc
        self.store = "no-store" not in cc
        tags = request.headers.get("x-semcache-tags", "")
        self.tags = tuple(t.strip() for t in tags.split(",") if t.strip())
        raw_ttl = request.headers.get("x-semcache-ttl")
        self.ttl: Any = UNSET
        if raw_ttl is not None:
            try:
                ttl = float(raw_ttl)
            except ValueError:
                raise InvalidInputError("X-Semcache-TTL must be a number of seconds") from None
            if not math.isfinite(ttl) or ttl <= 0 or ttl > 100 * 365 * 24 * 3600:
                raise InvalidInputError(
                    "X-Semcache-TTL must be a positive number of seconds (at most 100 years)"
                )
            self.ttl = ttl


def hit_headers(hit: Hit) -> dict[str, str]:
    """The response headers that describe a hit."""
    return {
        "x-semcache": "hit",
        "x-semcache-kind": hit.kind,
        "x-semcache-similarity": f"{hit.similarity:.4f}",
        "x-semcache-tier": hit.tier,
        "x-semcache-entry-id": hit.key,
        "x-semcache-age": f"{hit.age_seconds:.1f}",
    }


def as_completion(
    value: Any, metadata: dict[str, Any], model: str, key: str, created: float
) -> dict[str, Any] | None:
    """The stored value as a ``chat.completion`` dict, or ``None`` when it cannot be one."""
    fmt = metadata.get(FORMAT_KEY)
    if isinstance(value, list) and (metadata.get(STREAM_KEY) or fmt == FORMAT_CHAT_CHUNK):
        try:
            return chunks_to_completion(value)
        except SemcacheError:
            return None
    if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
        return value
    if isinstance(value, str) and value:
        # a plain answer stored through the JSON API under the same scope
        return {
            "id": f"chatcmpl-semcache-{key[:16]}",
            "object": "chat.completion",
            "created": int(created),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": value},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
    return None


def completion_metadata(
    completion: dict[str, Any],
    request_model: str,
    prices: Mapping[str, tuple[float, float]],
) -> dict[str, Any]:
    """The metadata stored with a completion: its format, and its usage and cost when known."""
    meta: dict[str, Any] = {FORMAT_KEY: FORMAT_CHAT_COMPLETION, "source": "proxy"}
    usage = usage_of(completion)
    if usage:
        meta["usage"] = usage
        price = prices.get(request_model) or prices.get(model_of(completion) or "")
        if price is not None:
            meta["cost"] = (
                usage.get("prompt_tokens", 0) * price[0]
                + usage.get("completion_tokens", 0) * price[1]
            ) / 1e6
    return meta


def wants_usage(payload: dict[str, Any]) -> bool:
    """Whether a streamed request asked for the trailing usage chunk (``stream_options``)."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def sse(chunk: Any) -> bytes:
    """One server-sent event carrying ``chunk`` as JSON."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode("utf-8") + b"\n\n"


def error_json(message: str, type_: str, code: int) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "code": code}}


def error_bytes(message: str, type_: str, code: int) -> bytes:
    """An OpenAI-style error body, encoded."""
    return json.dumps(error_json(message, type_, code)).encode("utf-8")
