"""Options more than one command takes: the store, entry filters, ``--json``, durations, params."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from .targets import CliContext, Filters

__all__ = [
    "DurationType",
    "filter_options",
    "filters",
    "json_option",
    "parse_params",
    "pass_ctx",
    "target_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Passes the :class:`CliContext` (created on first use) to a command.
pass_ctx = click.make_pass_decorator(CliContext, ensure=True)

#: ``--json`` on every read command.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


def _store_option(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(CliContext), name, value)

    return callback


def _store_flag(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            setattr(ctx.ensure_object(CliContext), name, True)

    return callback


#: (flag, CliContext field, SEMCACHE_ variable, help)
_TARGET_OPTIONS = [
    ("--server", "server", "SERVER", "URL of a running sidecar (instead of the local store)."),
    ("--token", "token", "TOKEN", "Bearer token for --server."),
    (
        "--sql-url",
        "sql_url",
        "SQL_URL",
        "SQLAlchemy URL of L3 [default: sqlite:///semcache.db].",
    ),
    ("--redis-url", "redis_url", "REDIS_URL", "Redis URL of L2 (optional)."),
    ("--redis-prefix", "redis_prefix", "REDIS_PREFIX", "Key prefix in Redis [default: semcache:]."),
    ("--config", "config_file", "CONFIG", "A TOML or JSON settings file."),
    ("--embedder", "embedder", "EMBEDDER", "default, none, hashing[:DIM] or a model name."),
]


def target_options(*, envvars: bool, remote: bool = True) -> Callable[[F], F]:
    """Options naming the store; on the group (with env vars) and again on each command.

    ``remote=False`` leaves out ``--server``/``--token`` (``serve`` is the server).
    """
    specs = [s for s in _TARGET_OPTIONS if remote or s[1] not in ("server", "token")]

    def decorate(f: F) -> F:
        for flag, name, var, help_ in reversed(specs):
            envvar = f"SEMCACHE_{var}" if envvars else None
            f = click.option(
                flag,
                name,
                envvar=envvar,
                default=None,
                expose_value=False,
                is_eager=True,
                callback=_store_option(name),
                help=help_,
                show_envvar=envvar is not None,
            )(f)
        # a flag, after --redis-url (SEMCACHE_REDIS_CLUSTER=1 is read with the other settings)
        f = click.option(
            "--redis-cluster",
            "redis_cluster",
            is_flag=True,
            default=False,
            expose_value=False,
            is_eager=True,
            callback=_store_flag("redis_cluster"),
            help="--redis-url names a Redis Cluster's nodes (comma-separated).",
        )(f)
        return f

    return decorate


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DurationType(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``30s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """Parse a duration."""
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration like 90, 30s, 15m, 2h, 7d or 1w", param, ctx)
        return float(m.group(1)) * _UNITS[m.group(2)]


def parse_params(pairs: Iterable[str]) -> dict[str, Any] | None:
    """``--param temperature=0`` pairs; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out or None


def filter_options(f: F) -> F:
    """--namespace/--model/--tag/--scope/--pattern/--older-than."""
    f = click.option(
        "--older-than",
        "older_than",
        type=DurationType(),
        default=None,
        help="Older than (90, 15m, 2h, 7d).",
    )(f)
    f = click.option(
        "--pattern",
        "prompt_pattern",
        default=None,
        help="Glob over the stored prompt, e.g. '*refund*'.",
    )(f)
    f = click.option("--scope", default=None, help="Scope hash.")(f)
    f = click.option("--tag", default=None, help="Tag.")(f)
    f = click.option("--model", default=None, help="Model name.")(f)
    f = click.option("--namespace", "-n", default=None, help="Namespace (tenant).")(f)
    return f


def filters(
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
) -> Filters:
    """The values of :func:`filter_options` as the :class:`Filters` a target takes."""
    return Filters(
        namespace=namespace,
        model=model,
        tag=tag,
        scope=scope,
        prompt_pattern=prompt_pattern,
        older_than_seconds=older_than,
    )
