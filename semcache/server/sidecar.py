"""What one sidecar app owns (:class:`Sidecar`), and the FastAPI dependencies that reach it."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import anyio
import httpx
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ..async_cache import AsyncSemanticCache
from ..errors import ConfigurationError, VerifierError
from .auth import TokenAuth
from .batching import MicroBatcher
from .config import ServerConfig
from .proxy_support import PrincipalDep

__all__ = ["PrincipalDep", "Sidecar", "SidecarDep", "error_response", "warm_up"]

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


#: The pair the verifier scores at start.
_WARM_UP_PAIR = ("semcache warm-up", "semcache warm-up")


def _warm_verifier(verifier: Any) -> bool:
    """Load ``verifier`` (its ``load()`` when it has one) and score one pair; ``False``
    when it was loaded already."""
    from ..verify.base import check_scores

    if getattr(verifier, "loaded", False) is True:
        return False
    load = getattr(verifier, "load", None)
    if callable(load):
        load()
    check_scores(verifier.score([_WARM_UP_PAIR]), 1, verifier.verifier_id)
    return True


async def warm_up(cache: AsyncSemanticCache) -> str | None:
    """Load the embedder and the pair verifier of an open cache now, off the event loop,
    so that the first semantic lookup does not pay for it.

    Returns:
        ``"<verifier id> (<seconds>s)"`` when the verifier was loaded by this call, else
        ``None`` (no verifier, or loaded before).

    Raises:
        VerifierError: the verifier could not load or score (a missing or corrupt model
            file, say).
    """
    if cache.embedder is not None:
        await cache.embed_many(["semcache warm-up"])
    verifier = cache.verifier
    if verifier is None:
        return None
    t0 = time.perf_counter()
    try:
        loaded = await anyio.to_thread.run_sync(_warm_verifier, verifier)
    except VerifierError:
        raise
    except Exception as exc:
        raise VerifierError(
            f"the verifier {verifier.verifier_id} could not load: {type(exc).__name__}: {exc}"
        ) from exc
    if not loaded:
        return None
    took = f"{verifier.verifier_id} ({time.perf_counter() - t0:.2f}s)"
    log.info("pair verifier %s loaded", took)
    return took


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
        self.metrics = CacheMetrics(lambda: self.cache, tenant_limit=config.tenant_metrics_limit)
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
        """Open the cache (tiers, schema, index) and warm the embedder and the verifier,
        off the event loop (see :func:`warm_up`); ``/readyz`` answers ready after that.

        A lifespan may run again after a shutdown (test clients do this); a cache this
        sidecar built is then built afresh, since a closed cache cannot reopen.

        Raises:
            ConfigurationError: a cache passed to :func:`create_app` was closed.
            VerifierError: the verifier could not load.
        """
        if self.cache.state == "closed":
            if self._given_cache is not None:
                raise ConfigurationError(
                    "the cache given to create_app() is closed; pass a new one"
                )
            self.cache = AsyncSemanticCache(self.config.cache)
            self.batcher = self._batcher()
        await self.cache.open()
        # the configured tenants take the first per-tenant metric labels
        self.cache.track_namespaces(sorted(set(self.config.tokens.values())))
        # load the models now, not inside the first caller's request
        await warm_up(self.cache)
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
