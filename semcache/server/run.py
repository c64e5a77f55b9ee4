"""Run the sidecar: open the cache, then serve the app with uvicorn until interrupted."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import SemcacheError
from .config import ServerConfig

__all__ = ["ServerStartError", "run_server"]


class ServerStartError(SemcacheError):
    """The sidecar could not start listening (the port is in use, say)."""


def _describe_startup(
    config: ServerConfig, generated_token: str | None, echo: Callable[[str], None]
) -> None:
    d = config.describe()
    tiers = " + ".join(
        f"{name.upper()} ({v if isinstance(v, str) else 'memory'})"
        for name, v in d["tiers"].items()
        if v is not None
    )
    echo(
        f"semcache: tiers {tiers}; index {'in-process FAISS' if d['embedder'] else 'off'}; embedder {d['embedder']}"
    )
    if not config.auth:
        click.echo(
            "semcache: WARNING: auth is OFF (--no-auth): anyone who can reach this port is admin",
            err=True,
        )
    elif generated_token:
        echo("semcache: no tokens configured; generated an admin token for this run:")
        echo(f"    export SEMCACHE_TOKEN={generated_token}")
    else:
        echo(
            f"semcache: auth on ({d['tokens']} tenant token(s){', admin token' if config.admin_token else ''})"
        )
    if d["upstream_url"]:
        echo(f"semcache: proxy forwards misses to {d['upstream_url']}")


def run_server(
    config: ServerConfig,
    *,
    generated_token: str | None = None,
    echo: Callable[[str], None] = click.echo,
) -> None:
    """Open the cache, then serve ``config`` with uvicorn until interrupted; print where it listens.

    Raises:
        ServerStartError: uvicorn could not start (the reason is logged before).
        SemcacheError: the cache could not open (a bad URL, an old schema, ...).
    """
    import anyio
    import uvicorn

    from ..async_cache import AsyncSemanticCache
    from ..tracing import configure_from_env
    from .app import create_app
    from .sidecar import warm_up

    _describe_startup(config, generated_token, echo)
    if configure_from_env() is not None:
        echo("semcache: OpenTelemetry traces on (configured from the OTEL_* environment variables)")
    # open (and migrate a new database, load the model) before binding, so that a bad
    # URL or an old schema is one clear error instead of a failed lifespan traceback
    cache = AsyncSemanticCache(config.cache)

    async def open_and_warm_up() -> str | None:
        await cache.open()
        try:
            return await warm_up(cache)
        except BaseException:
            await cache.aclose()
            raise

    t0 = time.perf_counter()
    verifier = anyio.run(open_and_warm_up)
    if verifier is not None:
        echo(f"semcache: pair verifier {verifier} loaded")
    echo(f"semcache: cache ready in {time.perf_counter() - t0:.1f}s")
    app = create_app(config, cache=cache)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                sock = self.servers[0].sockets[0].getsockname()
                host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
                echo(
                    f"semcache: listening on http://{host}:{sock[1]}  (docs: /docs, metrics: /metrics)"
                )
                sys.stdout.flush()

    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=config.access_log,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run()
    except SystemExit as exc:
        if server.started:
            raise
        # uvicorn exits with 3 when it cannot bind, which the CLI would read as "not found"
        raise ServerStartError(
            f"the sidecar could not start on {config.host}:{config.port} "
            f"(uvicorn exit {exc.code}; the reason is logged above, e.g. the port is in use)"
        ) from None
