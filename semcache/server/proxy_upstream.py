"""The proxy's upstream: which headers go there and come back, whose credentials, the calls.

* :func:`upstream_headers` — the request headers sent upstream: the caller's
  ``Accept`` and OpenAI headers, and the key (the sidecar's own, or else the
  caller's when the semcache token did not come in ``Authorization``);
* :func:`pass_back` — the upstream response headers handed back to the caller;
* :func:`flight_key` — the single-flight key: the cache key and the credentials;
* :func:`call_upstream` / :func:`open_stream` — one call, unstreamed or streamed; a
  transport failure becomes a 504 (timeout) or 502 (unreachable) :class:`Upstream`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request

from .. import tracing
from .auth import Principal
from .proxy_convert import JSON, error_bytes
from .proxy_support import ProxyHost

__all__ = [
    "Upstream",
    "call_upstream",
    "get_upstream",
    "flight_key",
    "open_stream",
    "pass_back",
    "upstream_headers",
]

log = logging.getLogger("semcache.server")

#: Upstream response headers worth handing back to the caller.
_PASS_BACK = (
    "content-type",
    "x-request-id",
    "retry-after",
    "openai-processing-ms",
    "openai-version",
)
_PASS_BACK_PREFIXES = ("x-ratelimit-",)
#: Caller headers forwarded upstream (besides the key).
_FORWARD = ("openai-organization", "openai-project", "openai-beta", "user-agent")
#: Upstream request headers that decide whose account answers (and whether it may).
_CREDENTIALS = ("authorization", "openai-organization", "openai-project")


@dataclass(frozen=True, slots=True)
class Upstream:
    """A finished upstream answer, shareable between single-flight followers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def flight_key(cache_key: str, headers: dict[str, str]) -> str:
    """The single-flight key: the cache key plus a digest of the upstream credentials.

    With callers' own keys, two identical requests made with different keys must not
    share one upstream call: a bad key's 401 (or a rate limit on one account) would
    otherwise be handed to a caller whose key is fine, and vice versa.
    """
    digest = hashlib.sha256()
    for name in _CREDENTIALS:
        digest.update(name.encode("ascii") + b"\0" + headers.get(name, "").encode("utf-8") + b"\0")
    return f"{cache_key}:{digest.hexdigest()[:32]}"


def upstream_headers(
    request: Request, principal: Principal, api_key: str | None
) -> dict[str, str]:
    """The headers of the upstream request made for ``request``."""
    headers = {
        "content-type": "application/json",
        "accept": request.headers.get("accept", "application/json"),
    }
    for name in _FORWARD:
        if name in request.headers:
            headers[name] = request.headers[name]
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    elif not principal.token_in_authorization and "authorization" in request.headers:
        # the semcache token came another way (or auth is off): this is the caller's own key
        headers["authorization"] = request.headers["authorization"]
    return headers


def pass_back(headers: Any) -> dict[str, str]:
    """The upstream response headers worth handing back to the caller."""
    return {
        k: v
        for k, v in headers.items()
        if k.lower() in _PASS_BACK or k.lower().startswith(_PASS_BACK_PREFIXES)
    }


def _transport_failure(
    host: ProxyHost, exc: httpx.HTTPError, headers: dict[str, str]
) -> Upstream:
    """The answer for a call that got no response: 504 on a timeout, else 502."""
    host.metrics.upstream_requests.labels("0").inc()
    if isinstance(exc, httpx.TimeoutException):
        return Upstream(
            504, error_bytes("the upstream timed out", "upstream_timeout", 504), headers
        )
    log.warning("upstream unreachable: %s", exc)
    return Upstream(
        502, error_bytes("the upstream is unreachable", "upstream_unreachable", 502), headers
    )


async def call_upstream(
    host: ProxyHost, payload: dict[str, Any], headers: dict[str, str]
) -> Upstream:
    """One unstreamed upstream call, read to the end."""
    assert host.upstream is not None
    with tracing.client_span("POST", host.upstream.base_url, "chat/completions") as span:
        try:
            resp = await host.upstream.post(
                "chat/completions", json=payload, headers=tracing.inject(headers)
            )
        except httpx.HTTPError as exc:
            span.failed(exc)
            return _transport_failure(host, exc, {})
        span.status(resp.status_code)
    host.metrics.upstream_requests.labels(str(resp.status_code)).inc()
    return Upstream(resp.status_code, resp.content, pass_back(resp.headers))


async def open_stream(
    host: ProxyHost, payload: dict[str, Any], headers: dict[str, str]
) -> httpx.Response | Upstream:
    """Start a streamed upstream call: the open 200 response, or the whole failed answer.

    An open response is the caller's to close; a failure (no response, or a status
    other than 200, read to the end and closed) comes back as an :class:`Upstream`.
    Its span ends with the response headers.
    """
    assert host.upstream is not None
    with tracing.client_span("POST", host.upstream.base_url, "chat/completions") as span:
        try:
            upstream_req = host.upstream.build_request(
                "POST", "chat/completions", json=payload, headers=tracing.inject(headers)
            )
            resp = await host.upstream.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            span.failed(exc)
            return _transport_failure(host, exc, JSON)
        span.status(resp.status_code)
    host.metrics.upstream_requests.labels(str(resp.status_code)).inc()
    if resp.status_code != 200:
        try:
            content = await resp.aread()
        finally:
            await resp.aclose()
        return Upstream(resp.status_code, content, pass_back(resp.headers))
    return resp


async def get_upstream(host: ProxyHost, path: str, headers: dict[str, str]) -> Upstream:
    """One ``GET`` of the upstream (``models``, say), read to the end."""
    assert host.upstream is not None
    headers = {k: v for k, v in headers.items() if k != "content-type"}
    with tracing.client_span("GET", host.upstream.base_url, path) as span:
        try:
            resp = await host.upstream.get(path, headers=tracing.inject(headers))
        except httpx.HTTPError as exc:
            span.failed(exc)
            return _transport_failure(host, exc, JSON)
        span.status(resp.status_code)
    host.metrics.upstream_requests.labels(str(resp.status_code)).inc()
    return Upstream(resp.status_code, resp.content, pass_back(resp.headers))
