"""What the proxy needs from the app that mounts it, as Protocols and FastAPI dependencies.

The proxy is written against :class:`ProxyHost` (which the sidecar satisfies) and
reaches it through :data:`HostDep` / :data:`PrincipalDep`, so it never imports the
sidecar module (which builds the proxy). The dependencies resolve exactly as the
sidecar's own do: the host from ``app.state.sidecar``, the caller through the
host's token auth (``Authorization: Bearer`` or ``X-Semcache-Token``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Protocol

import httpx
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer

from ..keys import Request as CacheRequest
from ..readthrough import AsyncCache
from .auth import Principal

__all__ = [
    "HostDep",
    "PrincipalDep",
    "ProxyBatcher",
    "ProxyConfig",
    "ProxyHost",
    "ProxyMetrics",
    "host",
    "principal",
]


class ProxyConfig(Protocol):
    """The server settings the proxy reads."""

    @property
    def upstream_api_key(self) -> str | None: ...

    @property
    def upstream_timeout_seconds(self) -> float: ...

    @property
    def prices(self) -> Mapping[str, tuple[float, float]]: ...


class ProxyMetrics(Protocol):
    """The metrics the proxy records."""

    @property
    def upstream_requests(self) -> Any: ...

    def observe_lookup(self, route: str, result: str, seconds: float) -> None: ...


class ProxyBatcher(Protocol):
    """The micro-batcher: ``lookup(req)`` returns a result with ``hit`` and ``embedding``."""

    async def lookup(self, request: CacheRequest) -> Any: ...


class ProxyAuth(Protocol):
    """Token auth: who the caller is."""

    def resolve(self, authorization: str | None, token_header: str | None) -> Principal: ...


class ProxyHost(Protocol):
    """What one app owns that the proxy uses (the sidecar)."""

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def cache(self) -> AsyncCache: ...

    @property
    def batcher(self) -> ProxyBatcher: ...

    @property
    def metrics(self) -> ProxyMetrics: ...

    @property
    def upstream(self) -> httpx.AsyncClient | None: ...

    @property
    def auth(self) -> ProxyAuth: ...

    @property
    def proxy(self) -> Any: ...


def host(request: Request) -> ProxyHost:
    """The app's host (a FastAPI dependency)."""
    return request.app.state.sidecar  # type: ignore[no-any-return]


_bearer = HTTPBearer(
    auto_error=False, description="A tenant token, or the admin token."
)
_token_header = APIKeyHeader(
    name="X-Semcache-Token",
    auto_error=False,
    scheme_name="semcacheToken",
    description=(
        "The semcache token in a header of its own, which leaves `Authorization` free for "
        "the caller's upstream key (the proxy)."
    ),
)


def principal(
    request: Request,
    _doc: Annotated[Any, Depends(_bearer)] = None,
    x_semcache_token: Annotated[str | None, Depends(_token_header)] = None,
) -> Principal:
    """Resolve the caller (a FastAPI dependency)."""
    return host(request).auth.resolve(request.headers.get("authorization"), x_semcache_token)


HostDep = Annotated[ProxyHost, Depends(host)]
PrincipalDep = Annotated[Principal, Depends(principal)]
