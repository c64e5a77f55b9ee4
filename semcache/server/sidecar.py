"""What one sidecar app owns (:class:`Sidecar`), and the FastAPI dependencies that reach it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import anyio
import httpx
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ..async_cache import AsyncSemanticCache
from ..errors import ConfigurationError
from .auth import TokenAuth
from .batching import MicroBatcher
from .config import ServerConfig
from .proxy_support import PrincipalDep

__all__ = ["PrincipalDep", "Sidecar", "SidecarDep", "error_response"]

log = logging.getLogger("semcache.server")
T = TypeVar("T")


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error in the OpenAI shape, which the ``openai`` client understands."""
    err: dict[str, Any] = {"message": message, "type": type_, "code": status}
    if details is not None:
        err["details"] = details
    return JSONResponse({"error": err}, status_code=status, headers=headers)


class Sidecar:
    """Everything one app owns; created by :func:`create_app`, opened by its lifespan."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        cache: AsyncSemanticCache | None = None,
        upstream_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        from ..contrib.prometheus import CacheMetrics

        self.config = config
        self._given_cache = cache
        self.cache = cache if cache is not None else AsyncSemanticCache(config.cache)
        self.auth = TokenAuth(config.tokens, config.admin_token, enabled=config.auth)
        # the collector reads whichever cache is current (a restarted lifespan builds a new one)
        self.metrics = CacheMetrics(lambda: self.cache)
        self.batcher = self._batcher()
        self._upstream_transport = upstream_transport
        self.upstream: httpx.AsyncClient | None = None
        self.ready = False
        self.proxy: Any = None
        # each tier's last health() answer, to log a change once rather than every probe
        self._tier_states: dict[str, str] = {}

    def _batcher(self) -> MicroBatcher:
        c = self.config
        return MicroBatcher(
            self.cache,
            window_seconds=c.batch_window_ms / 1000.0,
            max_batch=c.batch_max,
            concurrency=c.batch_concurrency,
            enabled=c.batching,
            on_batch=self.metrics.observe_batch,
        )

    async def open(self) -> None:
        """Open the cache (tiers, schema, index) and warm the embedder, off the event loop.

        A lifespan may run again after a shutdown (test clients do this); a cache this
        sidecar built is then built afresh, since a closed cache cannot reopen.

        Raises:
            ConfigurationError: a cache passed to :func:`create_app` was closed.
        """
        if self.cache.state == "closed":
            if self._given_cache is not None:
                raise ConfigurationError(
                    "the cache given to create_app() is closed; pass a new one"
                )
            self.cache = AsyncSemanticCache(self.config.cache)
            self.batcher = self._batcher()
        await self.cache.open()
        if self.cache.embedder is not None:
            # load the model now, not inside the first caller's request
            await self.cache.embed_many(["semcache warm-up"])
        if self.config.upstream_url is not None:
            self.upstream = httpx.AsyncClient(
                base_url=self.config.upstream_url.rstrip("/") + "/",
                timeout=httpx.Timeout(self.config.upstream_timeout_seconds, connect=10.0),
                transport=self._upstream_transport,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        from .proxy import Proxy

        self.proxy = Proxy(self)
        self.ready = True

    async def aclose(self) -> None:
        """Finish batches in flight, close the upstream client and the cache."""
        self.ready = False
        await self.batcher.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()
        await self.cache.aclose()

    def note_tier_states(self, health: Mapping[str, Any]) -> None:
        """Log each tier whose health changed since the last probe (with the message,
        which ``/readyz`` does not show)."""
        for name, status in health.items():
            text = str(status)
            if self._tier_states.get(name, "ok") != text:
                if text == "ok":
                    log.info("tier %s is ok again", name)
                else:
                    log.warning("tier %s: %s", name, text)
            self._tier_states[name] = text

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work that is not the cache's (rendering metrics, say) in a worker thread.

        The cache's own methods are awaitable (:class:`AsyncSemanticCache`): await them.
        """
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _sidecar(request: Request) -> Sidecar:
    return request.app.state.sidecar  # type: ignore[no-any-return]


SidecarDep = Annotated[Sidecar, Depends(_sidecar)]
