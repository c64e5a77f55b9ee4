"""``semcache serve``: run the sidecar."""

from __future__ import annotations

import errno
import secrets
import socket
from dataclasses import replace
from typing import Any

import click

from .options import pass_ctx, target_options
from .output import CliError
from .targets import CliContext

__all__ = ["serve"]


@click.command()
@target_options(envvars=False, remote=False)
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port (0: any free port) [default: 8080].")
@click.option(
    "--token",
    "tenant_tokens",
    multiple=True,
    metavar="TOKEN=TENANT",
    help="A tenant token (repeatable).",
)
@click.option(
    "--admin-token",
    default=None,
    help="Token for global operations (better: SEMCACHE_ADMIN_TOKEN).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Switch auth off: every caller is admin. Never on a shared network.",
)
@click.option(
    "--upstream-url", default=None, help="OpenAI-compatible base URL the proxy forwards misses to."
)
@click.option(
    "--upstream-api-key",
    default=None,
    help="Key for the upstream (better: SEMCACHE_UPSTREAM_API_KEY).",
)
@click.option("--max-body-bytes", type=int, default=None, help="Larger request bodies get 413.")
@click.option("--batch-window-ms", type=float, default=None, help="Micro-batch window for lookups.")
@click.option("--batch-max", type=int, default=None, help="Largest embedding micro-batch.")
@click.option("--no-batching", is_flag=True, help="Embed every lookup on its own.")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--access-log/--no-access-log", default=None, help="Log every request.")
@pass_ctx
def serve(
    ctx: CliContext,
    host: str | None,
    port: int | None,
    tenant_tokens: tuple[str, ...],
    admin_token: str | None,
    no_auth: bool,
    upstream_url: str | None,
    upstream_api_key: str | None,
    max_body_bytes: int | None,
    batch_window_ms: float | None,
    batch_max: int | None,
    no_batching: bool,
    log_level: str | None,
    access_log: bool | None,
) -> None:
    """Run the sidecar (JSON API, OpenAI-compatible proxy, /metrics) with uvicorn.

    With no arguments: L1 + SQLite file semcache.db in the current directory + an
    in-process index + all-MiniLM-L6-v2, on http://127.0.0.1:8080. With no token
    configured, a one-off admin token is generated and printed (or pass --no-auth).
    """
    from ..server.config import ServerConfig
    from ..server.run import run_server

    overrides: dict[str, Any] = dict(ctx.settings())
    overrides.update(
        host=host,
        port=port,
        admin_token=admin_token,
        upstream_url=upstream_url,
        upstream_api_key=upstream_api_key,
        max_body_bytes=max_body_bytes,
        batch_window_ms=batch_window_ms,
        batch_max=batch_max,
        log_level=log_level,
        access_log=access_log,
    )
    if tenant_tokens:
        overrides["tokens"] = ",".join(tenant_tokens)
    if no_auth:
        overrides["auth"] = False
    if no_batching:
        overrides["batching"] = False
    config = ServerConfig.load(file=ctx.config_file, **overrides)
    generated = None
    if config.auth and not config.tokens and not config.admin_token:
        # secure by default, and the first command still just works: a one-off admin token
        generated = "sc-" + secrets.token_urlsafe(24)
        config = replace(config, admin_token=generated)
    # before the model loads (seconds): a port in use is said at once
    check_port(config.host, config.port)
    try:
        run_server(config, generated_token=generated)
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn has shut down gracefully, or the cache was still opening
        click.echo("semcache: stopped", err=True)
        raise click.exceptions.Exit(130) from None


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will (SO_REUSEADDR), and let go at once.

    Raises:
        CliError: the port is in use, or the address cannot be listened on.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {port} on {host} is in use, so the sidecar could not start: stop what "
                    "listens there, or pass another --port (0: any free port)"
                ) from None
            if exc.errno == errno.EACCES:
                raise CliError(
                    f"may not listen on port {port} on {host} (ports below 1024 need privileges): pass another --port"
                ) from None
            raise CliError(f"cannot listen on {host}:{port} ({exc.strerror or exc}), so the sidecar could not start") from None
