"""The ``semcache`` command line: serve, inspect, look up, invalidate, migrate, rebuild, bench.

Every command that reads or changes entries works against either a local store (the
SQL database and Redis named by ``--sql-url``/``--redis-url`` or ``SEMCACHE_…``) or a
running sidecar (``--server URL`` with ``--token``). Human output is a table; every
read command takes ``--json``. Errors exit non-zero with one line, never a traceback.

Exit codes: 0 ok, 1 error, 2 usage error, 3 not found, 4 cannot reach the target.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..errors import SemcacheError

__all__ = ["CliContext", "CliError", "NotFoundError", "UnreachableError", "cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


# -- errors ------------------------------------------------------------------------
class CliError(click.ClickException):
    """A command failed; click prints ``Error: <message>`` and exits 1."""

    exit_code = 1


class NotFoundError(CliError):
    """The entry (or database) asked for does not exist."""

    exit_code = 3


class UnreachableError(CliError):
    """The sidecar, database or Redis could not be reached."""

    exit_code = 4


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _translate(exc: BaseException) -> click.ClickException | None:
    """Turn a library error into a one-line CLI error (``None``: not ours to translate)."""
    from ..errors import BackendUnavailable, InvalidInputError, SchemaVersionError

    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, BackendUnavailable):
        return UnreachableError(_one_line(exc))
    if isinstance(exc, (SchemaVersionError, InvalidInputError, SemcacheError)):
        return CliError(_one_line(exc))
    try:
        import httpx
    except ImportError:  # pragma: no cover
        httpx = None  # type: ignore[assignment]
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return UnreachableError(f"cannot reach the sidecar: {_one_line(exc)}")
    if isinstance(exc, OSError):
        return CliError(_one_line(exc))
    return None


class _Group(click.Group):
    """A group that turns library errors raised by any subcommand into one-line CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            translated = _translate(exc)
            if translated is None:
                raise
            raise translated from exc


# -- the context object --------------------------------------------------------------
@dataclass
class CliContext:
    """Where commands act: a local store (URLs) or a running sidecar (``server``)."""

    server: str | None = None
    token: str | None = None
    sql_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str | None = None
    config_file: str | None = None
    embedder: str | None = None

    def settings(self) -> dict[str, Any]:
        """The cache settings given on the command line (``None``: not given)."""
        return {
            "sql_url": self.sql_url,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "embedder": self.embedder,
        }

    def target(self, *, semantic: bool = False) -> _Target:
        """The store to act on: the sidecar when ``--server`` is given, else the local tiers."""
        if self.server:
            return RemoteTarget(self.server, self.token)
        return LocalTarget(self, semantic=semantic)


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)


def _store_option(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(CliContext), name, value)

    return callback


def target_options(*, envvars: bool, remote: bool = True) -> Callable[[F], F]:
    """Options naming the store; on the group (with env vars) and again on each command.

    ``remote=False`` leaves out ``--server``/``--token`` (``serve`` is the server).
    """

    def env(name: str) -> str | None:
        return f"SEMCACHE_{name}" if envvars else None

    specs = [
        (
            "--server",
            "server",
            env("SERVER"),
            "URL of a running sidecar (instead of the local store).",
        ),
        ("--token", "token", env("TOKEN"), "Bearer token for --server."),
        (
            "--sql-url",
            "sql_url",
            env("SQL_URL"),
            "SQLAlchemy URL of L3 [default: sqlite:///semcache.db].",
        ),
        ("--redis-url", "redis_url", env("REDIS_URL"), "Redis URL of L2 (optional)."),
        (
            "--redis-prefix",
            "redis_prefix",
            env("REDIS_PREFIX"),
            "Key prefix in Redis [default: semcache:].",
        ),
        ("--config", "config_file", env("CONFIG"), "A TOML or JSON settings file."),
        (
            "--embedder",
            "embedder",
            env("EMBEDDER"),
            "default, none, hashing[:DIM] or a model name.",
        ),
    ]

    if not remote:
        specs = [s for s in specs if s[1] not in ("server", "token")]

    def decorate(f: F) -> F:
        for flag, name, envvar, help_ in reversed(specs):
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
        return f

    return decorate


# -- targets ---------------------------------------------------------------------------
class _Target:
    """What every command needs from a store, local or remote."""

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def list(self, filters: dict[str, Any], limit: int, offset: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def show(self, entry_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def lookup(self, query: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def explain(self, query: dict[str, Any], k: int) -> dict[str, Any]:
        raise NotImplementedError

    def count(self, criteria: dict[str, Any]) -> int:
        raise NotImplementedError

    def invalidate(self, criteria: dict[str, Any]) -> int:
        raise NotImplementedError

    def flush(self) -> int:
        raise NotImplementedError

    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        raise NotImplementedError

    def index_check(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class LocalTarget(_Target):
    """The tiers named by URL, opened in this process."""

    def __init__(self, ctx: CliContext, *, semantic: bool) -> None:
        from ..server.config import ServerConfig

        cfg = ServerConfig.load(
            file=ctx.config_file, **{k: v for k, v in ctx.settings().items() if v is not None}
        ).cache
        if cfg.sql is not None:
            _require_database(cfg.sql.url)
            # inspecting must not create or migrate a database behind the user's back
            cfg = replace(cfg, sql=replace(cfg.sql, create_if_empty=False, auto_upgrade=False))
        if not semantic:
            cfg = replace(cfg, embedder=None)  # nothing to embed: skip loading a model
        self.config = cfg
        self._cache: Any = None

    @property
    def cache(self) -> Any:
        """The opened cache."""
        if self._cache is None:
            from ..cache import SemanticCache

            self._cache = SemanticCache(self.config).open()
            sql = next((t for t in self._cache.tiers if getattr(t, "name", "") == "l3"), None)
            if sql is not None:
                sql.open()  # a schema problem is an error here, not a silent skip
        return self._cache

    def _selector(self, criteria: dict[str, Any]) -> Any:
        from ..keys import build_request
        from ..types import Selector

        keys = list(criteria.get("keys") or ())
        if criteria.get("prompt") is not None:
            keys.append(
                build_request(
                    criteria["prompt"],
                    model=criteria.get("model"),
                    params=criteria.get("params"),
                    namespace=criteria.get("namespace"),
                ).key
            )
        return Selector(
            keys=tuple(keys),
            scope=criteria.get("scope"),
            namespace=criteria.get("namespace"),
            model=criteria.get("model"),
            tag=criteria.get("tag"),
            older_than_seconds=criteria.get("older_than_seconds"),
            prompt_pattern=criteria.get("prompt_pattern"),
        )

    def stats(self) -> dict[str, Any]:
        from ..admin import listing_tier

        cache = self.cache
        out: dict[str, Any] = {"target": "local", "tiers": {}}
        now = cache.timer()
        health = cache.health()
        for t in cache.tiers:
            name = getattr(t, "name", "?")
            if name == "l1":
                continue  # this process's own L1 is empty: nothing to report
            # a tier that cannot be reached says so, instead of an empty but normal-looking row
            info: dict[str, Any] = {"status": health.get(name, "ok")}
            if info["status"] != "ok":
                out["tiers"][name] = info
                continue
            if name == "l3":
                from ..config import redact_url
                from ..db.migrate import current_revision, head_revision

                info.update(
                    url=redact_url(t.url),
                    entries_live=t.count(now),
                    entries_total=t.count(),
                    schema_revision=current_revision(t.engine),
                    schema_head=head_revision(),
                )
            elif name == "l2":
                from ..config import redact_url

                info.update(url=redact_url(t.url) if hasattr(t, "url") else None)
                if listing_tier(cache) is t:
                    info["entries_live"] = sum(1 for e in t.iter_entries() if not e.expired(now))
            out["tiers"][name] = info
        live = [
            v.get("entries_live")
            for v in out["tiers"].values()
            if v.get("entries_live") is not None
        ]
        out["entries"] = live[-1] if live else None
        return out

    def list(self, filters: dict[str, Any], limit: int, offset: int) -> list[dict[str, Any]]:
        from ..admin import entry_view, list_entries

        sel = self._selector(filters)
        now = self.cache.timer()
        return [
            entry_view(e, now)
            for e in list_entries(
                self.cache, None if sel.is_empty() else sel, now, limit=limit, offset=offset
            )
        ]

    def show(self, entry_id: str) -> dict[str, Any] | None:
        from ..admin import entry_view

        entry = self.cache.get_entry(entry_id)
        return None if entry is None else entry_view(entry, self.cache.timer(), include_value=True)

    def lookup(self, query: dict[str, Any]) -> dict[str, Any]:
        from ..admin import value_fields
        from ..config import UNSET

        req = self.cache.request(
            query["prompt"],
            model=query.get("model"),
            params=query.get("params"),
            namespace=query.get("namespace"),
        )
        thr = UNSET if query.get("threshold") is None else query["threshold"]
        hit = self.cache.lookup(req, threshold=thr)
        if hit is None:
            return {"hit": False, "key": req.key}
        return {"key": req.key, "hit": True, **hit.as_dict(), **value_fields(hit.value)}

    def explain(self, query: dict[str, Any], k: int) -> dict[str, Any]:
        from ..config import UNSET

        thr = UNSET if query.get("threshold") is None else query["threshold"]
        return dict(
            self.cache.explain(
                query["prompt"],
                model=query.get("model"),
                params=query.get("params"),
                namespace=query.get("namespace"),
                threshold=thr,
                k=k,
            )
        )

    def count(self, criteria: dict[str, Any]) -> int:
        from ..admin import count_matching
        from ..types import Selector

        sel = Selector.everything() if criteria.get("all") else self._selector(criteria)
        return count_matching(self.cache, sel, self.cache.timer())

    def _tier_counters(self) -> dict[str, tuple[int, int]]:
        """Each tier's (errors, skipped) counts, to tell afterwards whether a call missed it."""
        tiers = self.cache.stats().get("tiers", {})
        return {
            name: (int(t.get("errors", 0)), int(t.get("skipped", 0))) for name, t in tiers.items()
        }

    def _reach_every_tier(self, what: str, fn: Callable[[], int]) -> int:
        """Run a removal; fail when a tier missed it.

        The cache defers what a tier down misses until the tier is back, but only in
        this process, which exits right after: the entries would live on in that tier.

        Raises:
            UnreachableError: a tier was down, or failed, during the call.
        """
        before = self._tier_counters()
        removed = fn()
        tiers = self.cache.stats().get("tiers", {})
        missed = [
            name
            for name, t in tiers.items()
            if t.get("down")
            or (int(t.get("errors", 0)), int(t.get("skipped", 0))) != before.get(name, (0, 0))
        ]
        if missed:
            raise UnreachableError(
                f"tier {', '.join(missed)} could not be reached and missed the {what} "
                f"({removed} entries removed from the other tiers); run it again once it is back"
            )
        return removed

    def invalidate(self, criteria: dict[str, Any]) -> int:
        sel = self._selector(criteria)
        return self._reach_every_tier(
            "invalidation", lambda: int(self.cache.invalidate_selector(sel))
        )

    def flush(self) -> int:
        return self._reach_every_tier("flush", lambda: int(self.cache.flush()))

    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        return int(self.cache.rebuild_index(reembed=reembed, progress=progress))

    def index_check(self) -> dict[str, Any]:
        return dict(self.cache.check_index())

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def _require_database(url: str) -> None:
    """A missing SQLite file is a clear error, not a new empty database."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception as exc:  # SQLAlchemy raises several types for a bad URL
        raise CliError(f"invalid SQL URL: {exc}") from exc
    is_file = u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:")
    if is_file and not Path(str(u.database)).exists():
        raise NotFoundError(
            f"no database at {u.database} (start the sidecar once, or run `semcache db upgrade`, to create it)"
        )


class RemoteTarget(_Target):
    """A running sidecar, over its JSON API."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.client.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (
                ValueError,
                KeyError,
                TypeError,
            ):  # not our JSON error shape (a proxy in between?)
                message = resp.text.strip()[:200] or resp.reason_phrase
            if resp.status_code == 404:
                raise NotFoundError(message)
            if resp.status_code in (401, 403):
                raise CliError(
                    f"{message} (HTTP {resp.status_code}; pass --token or set SEMCACHE_TOKEN)"
                )
            raise CliError(f"{message} (HTTP {resp.status_code})")
        return resp.json()

    @staticmethod
    def _criteria_body(criteria: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in criteria.items() if v not in (None, (), []) and k != "all"}
        if "keys" in body:
            body["keys"] = list(body["keys"])
        return body

    def stats(self) -> dict[str, Any]:
        return {"target": self.url, **self._call("GET", "/v1/stats")}

    def list(self, filters: dict[str, Any], limit: int, offset: int) -> list[dict[str, Any]]:
        params = {
            k: v
            for k, v in filters.items()
            if v is not None
            and k in ("namespace", "model", "tag", "scope", "older_than_seconds", "prompt_pattern")
        }
        data = self._call("GET", "/v1/entries", params={**params, "limit": limit, "offset": offset})
        return list(data["entries"])

    def show(self, entry_id: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", f"/v1/entries/{entry_id}"))
        except NotFoundError:
            return None

    def lookup(self, query: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self._call("POST", "/v1/lookup", json={k: v for k, v in query.items() if v is not None})
        )

    def explain(self, query: dict[str, Any], k: int) -> dict[str, Any]:
        return dict(
            self._call(
                "POST",
                "/v1/explain",
                json={**{k2: v for k2, v in query.items() if v is not None}, "k": k},
            )
        )

    def count(self, criteria: dict[str, Any]) -> int:
        if criteria.get("all"):
            raise CliError("counting every entry needs the local store; use `semcache stats`")
        data = self._call(
            "POST", "/v1/invalidate", json={**self._criteria_body(criteria), "dry_run": True}
        )
        return int(data["matched"])

    def invalidate(self, criteria: dict[str, Any]) -> int:
        return int(
            self._call("POST", "/v1/invalidate", json=self._criteria_body(criteria))["removed"]
        )

    def flush(self) -> int:
        return int(self._call("POST", "/v1/flush")["removed"])

    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        return int(self._call("POST", "/v1/index/rebuild", params={"reembed": reembed})["vectors"])

    def index_check(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/index/check"))

    def close(self) -> None:
        self.client.close()


# -- output helpers ----------------------------------------------------------------------
def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as aligned columns (the last column is never padded)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = (
        "  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths[:-1]))
        + ("  " if len(headers) > 1 else "")
        + headers[-1]
    )
    click.echo(line)
    for r in cells:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1]))
            + ("  " if len(r) > 1 else "")
            + r[-1]
        )


def _kv(data: dict[str, Any], indent: int = 0) -> None:
    width = max((len(str(k)) for k in data), default=0)
    for k, v in data.items():
        if isinstance(v, dict) and v:
            click.echo(f"{' ' * indent}{k}:")
            _kv(v, indent + 2)
        else:
            shown = (
                "-"
                if v is None or v == {}
                else (", ".join(map(str, v)) if isinstance(v, list) else v)
            )
            click.echo(f"{' ' * indent}{str(k).ljust(width)}  {shown}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{s:.0f}s"


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


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


def _params(pairs: Iterable[str]) -> dict[str, Any] | None:
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


def _with_target(ctx: CliContext, semantic: bool = False) -> _Target:
    target = ctx.target(semantic=semantic)
    click.get_current_context().call_on_close(target.close)
    return target


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


# -- the group ---------------------------------------------------------------------------
@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="semcache", prog_name="semcache", message="%(prog)s %(version)s")
@target_options(envvars=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """semcache: a multi-level semantic cache for LLM calls.

    Commands act on the local store (SQLite semcache.db by default; --sql-url,
    --redis-url) or on a running sidecar (--server URL --token T).
    """
    ctx.ensure_object(CliContext)


# -- serve -------------------------------------------------------------------------------
@cli.command()
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
    run_server(config, generated_token=generated)


def run_server(
    config: Any, *, generated_token: str | None = None, echo: Callable[[str], None] = click.echo
) -> None:
    """Open the cache, then serve ``config`` with uvicorn until interrupted; print where it listens."""
    import anyio
    import uvicorn

    from ..async_cache import AsyncSemanticCache
    from ..server.app import create_app

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
    # open (and migrate a new database, load the model) before binding, so that a bad
    # URL or an old schema is one clear error instead of a failed lifespan traceback
    cache = AsyncSemanticCache(config.cache)
    t0 = time.perf_counter()
    anyio.run(cache.open)
    if cache.sync.embedder is not None:
        cache.sync.embed_many(["semcache warm-up"])
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
        # uvicorn exits with 3 when it cannot bind, which here would read as "not found"
        raise CliError(
            f"the sidecar could not start on {config.host}:{config.port} "
            f"(uvicorn exit {exc.code}; the reason is logged above, e.g. the port is in use)"
        ) from None


# -- stats, ls, show --------------------------------------------------------------------
@cli.command()
@target_options(envvars=False)
@json_option
@pass_ctx
def stats(ctx: CliContext, as_json: bool) -> None:
    """Counters and sizes: hits by tier and kind, misses, entries, savings (sidecar) or stored entries (local)."""
    data = _with_target(ctx).stats()
    if as_json:
        _echo_json(data)
        return
    if data.get("target") == "local":
        _kv({k: v for k, v in data.items() if k != "target"})
        return
    hits, misses = data.get("hits", 0), data.get("misses", 0)
    total = hits + misses
    summary = {
        "sidecar": data.get("target"),
        "hits": hits,
        "misses": misses,
        "hit rate": f"{hits / total:.1%}" if total else "-",
        "hits by tier/kind": data.get("hits_by") or None,
        "sets": data.get("sets"),
        "invalidated": data.get("invalidated"),
        "tokens saved": data.get("saved_tokens"),
        "money saved": f"${data.get('saved_cost_usd', 0):.4f}",
        "index vectors": (data.get("index") or {}).get("entries"),
        "tier errors": data.get("tier_errors") or None,
    }
    _kv(summary)


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


def _filters(
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
) -> dict[str, Any]:
    """The values of :func:`filter_options` as the entry filters a target takes."""
    return {
        "namespace": namespace,
        "model": model,
        "tag": tag,
        "scope": scope,
        "prompt_pattern": prompt_pattern,
        "older_than_seconds": older_than,
    }


@cli.command("ls")
@target_options(envvars=False)
@filter_options
@click.option(
    "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Entries per page."
)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True, help="Page number.")
@json_option
@pass_ctx
def ls(
    ctx: CliContext,
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
    limit: int,
    page: int,
    as_json: bool,
) -> None:
    """List entries, newest first, filtered and paginated."""
    filters = _filters(namespace, model, tag, scope, prompt_pattern, older_than)
    entries = _with_target(ctx).list(filters, limit, (page - 1) * limit)
    if as_json:
        _echo_json({"entries": entries, "page": page, "limit": limit})
        return
    if not entries:
        click.echo("no entries" + (" on this page" if page > 1 else ""))
        return
    _table(
        [
            (
                e["entry_id"],
                _duration(e.get("age_seconds")),
                _duration(e.get("ttl_seconds_left")),
                e.get("model") or "-",
                e.get("namespace") or "-",
                ",".join(e.get("tags") or []) or "-",
                _short(e.get("prompt", "")),
            )
            for e in entries
        ],
        ["ID", "AGE", "TTL", "MODEL", "NAMESPACE", "TAGS", "PROMPT"],
    )
    if len(entries) == limit:
        click.echo(f"(page {page}; next: --page {page + 1})")


@cli.command()
@target_options(envvars=False)
@click.argument("entry_id")
@json_option
@pass_ctx
def show(ctx: CliContext, entry_id: str, as_json: bool) -> None:
    """Show one entry with its value."""
    entry = _with_target(ctx).show(entry_id)
    if entry is None:
        raise NotFoundError(f"no entry {entry_id}")
    if as_json:
        _echo_json(entry)
        return
    value = entry.pop("value", None)
    b64 = entry.pop("value_base64", None)
    entry["age"] = _duration(entry.pop("age_seconds", None))
    entry["ttl_left"] = _duration(entry.pop("ttl_seconds_left", None))
    _kv(entry)
    click.echo("value:")
    click.echo(
        f"  <{len(b64) * 3 // 4} bytes, base64> {b64[:60]}"
        if b64
        else json.dumps(value, indent=2, ensure_ascii=False)
    )


# -- lookup ----------------------------------------------------------------------------
@cli.command()
@target_options(envvars=False)
@click.argument("prompt")
@click.option("--model", default=None, help="Scope: model name.")
@click.option("--namespace", "-n", default=None, help="Scope: namespace (tenant).")
@click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Scope: a generation param (repeatable).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Cosine similarity for this lookup.",
)
@click.option(
    "--explain", is_flag=True, help="Show the nearest candidates, the checks and the decision."
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Candidates to show with --explain.",
)
@json_option
@pass_ctx
def lookup(
    ctx: CliContext,
    prompt: str,
    model: str | None,
    namespace: str | None,
    param_pairs: tuple[str, ...],
    threshold: float | None,
    explain: bool,
    k: int,
    as_json: bool,
) -> None:
    """Look PROMPT up (exact, then semantic); --explain shows why it hits or misses."""
    query = {
        "prompt": prompt,
        "model": model,
        "namespace": namespace,
        "params": _params(param_pairs),
        "threshold": threshold,
    }
    target = _with_target(ctx, semantic=True)
    if explain:
        data = target.explain(query, k)
        if as_json:
            _echo_json(data)
            return
        _print_explain(data)
        return
    data = target.lookup(query)
    if as_json:
        _echo_json(data)
        return
    if not data.get("hit"):
        click.echo(f"miss  (key {data.get('key')})")
        return
    click.echo(
        f"hit  {data['kind']} from {data['tier']}  similarity {data['similarity']:.4f}  entry {data['entry_id']}  "
        f"age {_duration(data.get('age_seconds'))}  ttl {_duration(data.get('ttl_seconds_left'))}"
    )
    click.echo(f"matched prompt: {data.get('matched_prompt')}")
    value = data.get("value")
    click.echo(
        "value: " + (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    )


def _print_explain(data: dict[str, Any]) -> None:
    click.echo(
        f"key {data.get('key')}  scope {data.get('scope')}  threshold {data.get('threshold')}"
    )
    cands = data.get("candidates") or []
    if cands:
        _table(
            [
                (
                    f"{c['similarity']:.4f}",
                    "yes" if c.get("passed_threshold") else "no",
                    " ".join(
                        f"{g['name']}:{'ok' if g['passed'] else 'FAIL'}"
                        for g in c.get("guards") or []
                    )
                    or "-",
                    c.get("decision", ""),
                    c.get("entry_id", ""),
                    _short(c.get("prompt") or "-", 50),
                )
                for c in cands
            ],
            ["SIMILARITY", ">=THR", "CHECKS", "DECISION", "ENTRY", "PROMPT"],
        )
    elif data.get("kind") != "exact":
        click.echo("no semantic candidates in this scope")
    decision = data.get("decision", "miss")
    detail = (
        f" ({data['kind']}, entry {data.get('entry_id')})"
        if decision == "hit"
        else (f" ({data['reason']})" if data.get("reason") else "")
    )
    click.echo(f"decision: {decision}{detail}")


# -- invalidate, flush ---------------------------------------------------------------------
@cli.command()
@target_options(envvars=False)
@click.option("--id", "--key", "keys", multiple=True, help="Entry id / exact key (repeatable).")
@click.option(
    "--prompt",
    default=None,
    help="The entry stored for this exact prompt (with --model/--namespace/--param).",
)
@click.option(
    "--param", "param_pairs", multiple=True, metavar="KEY=VALUE", help="Scope param for --prompt."
)
@filter_options
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask, however many entries match.")
@click.option(
    "--confirm-over",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Ask before removing more than this many.",
)
@json_option
@pass_ctx
def invalidate(
    ctx: CliContext,
    keys: tuple[str, ...],
    prompt: str | None,
    param_pairs: tuple[str, ...],
    namespace: str | None,
    model: str | None,
    tag: str | None,
    scope: str | None,
    prompt_pattern: str | None,
    older_than: float | None,
    dry_run: bool,
    yes: bool,
    confirm_over: int,
    as_json: bool,
) -> None:
    """Remove entries from every tier and the index; criteria combine with AND."""
    criteria = {
        "keys": keys,
        "prompt": prompt,
        "params": _params(param_pairs),
        **_filters(namespace, model, tag, scope, prompt_pattern, older_than),
    }
    if not any(v not in (None, (), []) for k, v in criteria.items() if k != "params"):
        raise click.UsageError(
            "name at least one of --id, --prompt, --namespace, --model, --tag, --scope, --pattern, --older-than (or use `semcache flush`)"
        )
    target = _with_target(ctx)
    matched = target.count(criteria)
    if dry_run:
        _echo_json({"matched": matched, "dry_run": True}) if as_json else click.echo(
            f"would remove {matched} entries"
        )
        return
    if matched > confirm_over and not yes:
        click.confirm(f"remove {matched} entries?", abort=True, err=True)
    removed = target.invalidate(criteria)
    _echo_json({"removed": removed}) if as_json else click.echo(f"removed {removed} entries")


@cli.command()
@target_options(envvars=False)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@json_option
@pass_ctx
def flush(ctx: CliContext, yes: bool, as_json: bool) -> None:
    """Remove every entry (with a tenant token on --server: every entry of that tenant)."""
    target = _with_target(ctx)
    if not yes:
        what = (
            "every entry of this token's tenant (or all, for the admin)"
            if isinstance(target, RemoteTarget)
            else f"all {target.count({'all': True})} entries"
        )
        click.confirm(f"remove {what}?", abort=True, err=True)
    removed = target.flush()
    _echo_json({"removed": removed}) if as_json else click.echo(f"removed {removed} entries")


# -- db ----------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema: upgrade to this version's revision, or show the current one."""


db_url_option = click.option(
    "--url",
    default=None,
    help="SQLAlchemy URL (default: --sql-url / SEMCACHE_SQL_URL / sqlite:///semcache.db).",
)


def _sql_url(ctx: CliContext, url: str | None) -> str:
    if url:
        return url
    from ..server.config import ServerConfig

    cfg = ServerConfig.load(
        file=ctx.config_file, **{k: v for k, v in ctx.settings().items() if v is not None}
    ).cache
    if cfg.sql is None:
        raise CliError("no SQL database configured (SEMCACHE_SQL_URL=none)")
    return cfg.sql.url


@db.command("upgrade")
@target_options(envvars=False)
@db_url_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@json_option
@pass_ctx
def db_upgrade(ctx: CliContext, url: str | None, revision: str, as_json: bool) -> None:
    """Create or migrate the schema (Alembic) up to REVISION."""
    from ..config import redact_url
    from ..db.migrate import upgrade

    sql_url = _sql_url(ctx, url)
    try:
        reached = upgrade(sql_url, revision)
    except (
        Exception
    ) as exc:  # alembic and drivers raise many types; one line is what the user needs
        translated = _translate(exc)
        raise (
            translated if translated is not None else CliError(f"upgrade failed: {_one_line(exc)}")
        ) from exc
    if as_json:
        _echo_json({"url": redact_url(sql_url), "revision": reached})
    else:
        click.echo(f"{redact_url(sql_url)} is at revision {reached}")


@db.command("current")
@target_options(envvars=False)
@db_url_option
@json_option
@pass_ctx
def db_current(ctx: CliContext, url: str | None, as_json: bool) -> None:
    """Show the schema revision of the database and whether it needs an upgrade."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..config import redact_url
    from ..db.migrate import current_revision, head_revision
    from ..tiers.sql import make_engine

    sql_url = _sql_url(ctx, url)
    _require_database(sql_url)
    engine = make_engine(sql_url)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise UnreachableError(f"cannot read {redact_url(sql_url)}: {_one_line(cause)}") from exc
    finally:
        engine.dispose()
    head = head_revision()
    status = (
        "up to date"
        if current == head
        else (
            "empty: run `semcache db upgrade`" if current is None else "needs `semcache db upgrade`"
        )
    )
    if as_json:
        _echo_json(
            {
                "url": redact_url(sql_url),
                "current": current,
                "head": head,
                "up_to_date": current == head,
            }
        )
    else:
        _kv(
            {
                "database": redact_url(sql_url),
                "current": current or "-",
                "head": head,
                "status": status,
            }
        )


# -- index ---------------------------------------------------------------------------------
@cli.group()
def index() -> None:
    """The semantic index: rebuild it from L3, or check it against L3."""


@index.command("rebuild")
@target_options(envvars=False)
@click.option(
    "--reembed", is_flag=True, help="Also embed entries with no vector (or another embedder's)."
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: on a terminal]."
)
@json_option
@pass_ctx
def index_rebuild(ctx: CliContext, reembed: bool, progress: bool | None, as_json: bool) -> None:
    """Rebuild the index (locally this loads the model; with --server the sidecar's own index)."""
    show = sys.stderr.isatty() if progress is None else progress
    n = _with_target(ctx, semantic=True).index_rebuild(reembed, show and not as_json)
    _echo_json({"vectors": n}) if as_json else click.echo(f"index holds {n} vectors")


@index.command("check")
@target_options(envvars=False)
@json_option
@pass_ctx
def index_check(ctx: CliContext, as_json: bool) -> None:
    """Compare the index with L3: counts and keys missing on either side (exit 1 if inconsistent)."""
    data = _with_target(ctx, semantic=True).index_check()
    if as_json:
        _echo_json(data)
    else:
        _kv(data)
        unembedded = (data.get("l3_total_live") or 0) - (data.get("l3_embedded") or 0)
        if data.get("semantic") and unembedded > 0:
            # not an error: long prompts are exact-only, and other embedders' vectors are never compared
            click.echo(
                f"note: {unembedded} live entries have no vector from {data.get('embedder')}; "
                "`semcache index rebuild --reembed` embeds them"
            )
    if data.get("semantic") and data.get("consistent") is False:
        raise CliError("the index and L3 disagree: run `semcache index rebuild`")


# -- bench ---------------------------------------------------------------------------------
def _benchmarks_dir() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        d = base / "benchmarks"
        if d.is_dir() and any(d.glob("bench_*.py")):
            return d
    raise NotFoundError("no benchmarks/ folder found: run `semcache bench` from a source checkout")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, default="sidecar_load")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks.")
def bench(name: str, args: tuple[str, ...], list_only: bool) -> None:
    """Run a benchmark from benchmarks/ (default: sidecar_load); extra ARGS go to it."""
    d = _benchmarks_dir()
    available = sorted(p.stem[len("bench_") :] for p in d.glob("bench_*.py"))
    if list_only:
        click.echo("\n".join(available))
        return
    if name not in available:
        raise NotFoundError(f"no benchmark {name!r}; available: {', '.join(available)}")
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    rc = subprocess.call([sys.executable, str(d / f"bench_{name}.py"), *args], env=env)
    if rc != 0:
        raise CliError(f"benchmark {name} exited with status {rc}")


# -- entry point -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI; unexpected errors print one line (set SEMCACHE_DEBUG=1 for the traceback)."""
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="semcache",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SEMCACHE_DEBUG"):
            raise
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {_one_line(exc)} (SEMCACHE_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
