"""Where commands act: the local store (tiers opened in this process) or a running sidecar.

A command builds a :class:`Query`, :class:`Filters` or :class:`Criteria` from its options,
calls :func:`open_target`, and asks the :class:`Target` it gets; it never knows which
kind it has. :class:`LocalTarget` drives a :class:`~semcache.cache.SemanticCache` through
its public API; :class:`RemoteTarget` calls the sidecar's JSON API.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .output import CliError, NotFoundError, UnreachableError

if TYPE_CHECKING:
    from ..cache import SemanticCache
    from ..config import CacheConfig
    from ..types import Selector

__all__ = [
    "CliContext",
    "Criteria",
    "Filters",
    "LocalTarget",
    "Query",
    "RemoteTarget",
    "Target",
    "open_target",
    "require_database",
]


@dataclass
class CliContext:
    """The store options given on the command line: a sidecar (``server``) or local URLs."""

    server: str | None = None
    token: str | None = None
    sql_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str | None = None
    redis_cluster: bool | None = None
    config_file: str | None = None
    embedder: str | None = None

    def settings(self) -> dict[str, Any]:
        """The cache settings given on the command line (``None``: not given)."""
        return {
            "sql_url": self.sql_url,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "redis_cluster": self.redis_cluster,
            "embedder": self.embedder,
        }

    def cache_config(self) -> CacheConfig:
        """The cache configuration: the config file, ``SEMCACHE_…`` variables, then these options.

        Raises:
            ConfigurationError: a setting does not parse, or the file cannot be read.
        """
        from ..server.config import ServerConfig

        given = {k: v for k, v in self.settings().items() if v is not None}
        return ServerConfig.load(file=self.config_file, **given).cache


# -- what commands ask for -------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One prompt to look up, in its scope."""

    prompt: str
    model: str | None = None
    namespace: str | None = None
    params: dict[str, Any] | None = None
    threshold: float | None = None

    def body(self) -> dict[str, Any]:
        """The sidecar's request body: the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Filters:
    """Which entries: every criterion given must match (AND)."""

    namespace: str | None = None
    model: str | None = None
    tag: str | None = None
    scope: str | None = None
    prompt_pattern: str | None = None
    older_than_seconds: float | None = None

    def given(self) -> dict[str, Any]:
        """The criteria that are set, by their sidecar name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) not in (None, (), [])
        }


@dataclass(frozen=True)
class Criteria(Filters):
    """What an invalidation removes: :class:`Filters`, entry ids, and the entry of one exact prompt.

    ``params`` scopes ``prompt`` only; on its own it selects nothing.
    """

    keys: tuple[str, ...] = ()
    prompt: str | None = None
    params: dict[str, Any] | None = None

    def is_empty(self) -> bool:
        """Whether no criterion that selects entries is given."""
        return not any(k != "params" for k in self.given())


# -- the target --------------------------------------------------------------------------
class Target(abc.ABC):
    """What every command needs from a store, local or remote."""

    #: Whether this is a sidecar (whose tenant token may confine what a command reaches).
    remote: bool = False

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters (sidecar) or entry counts and schema per tier (local)."""

    @abc.abstractmethod
    def list(self, filters: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
        """One page of entry views, newest first."""

    @abc.abstractmethod
    def show(self, entry_id: str) -> dict[str, Any] | None:
        """One entry's view with its value (``None``: no such entry)."""

    @abc.abstractmethod
    def lookup(self, query: Query) -> dict[str, Any]:
        """The hit (with its value) or the miss for ``query``."""

    @abc.abstractmethod
    def explain(self, query: Query, k: int) -> dict[str, Any]:
        """The ``k`` nearest candidates for ``query``, each check's verdict, the decision."""

    @abc.abstractmethod
    def count(self, criteria: Criteria) -> int:
        """How many entries an invalidation with ``criteria`` would remove."""

    @abc.abstractmethod
    def count_all(self) -> int:
        """How many entries a flush would remove."""

    @abc.abstractmethod
    def invalidate(self, criteria: Criteria) -> int:
        """Remove the matching entries; how many went."""

    @abc.abstractmethod
    def flush(self) -> int:
        """Remove every entry (a sidecar tenant: that tenant's); how many went."""

    @abc.abstractmethod
    def feedback(self, entry_id: str, query: Query, correct: bool, source: str) -> dict[str, Any]:
        """Report the hit of ``entry_id`` on ``query`` wrong or correct; what the report did."""

    @abc.abstractmethod
    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        """Rebuild the semantic index; how many vectors it holds."""

    @abc.abstractmethod
    def index_check(self) -> dict[str, Any]:
        """Compare the index with L3."""

    def close(self) -> None:
        """Release connections."""


def open_target(ctx: CliContext, *, semantic: bool = False) -> Target:
    """The store to act on, closed when the command ends: the sidecar with ``--server``, else local.

    ``semantic``: the command embeds (a local store loads the embedder only then).
    """
    target: Target = (
        RemoteTarget(ctx.server, ctx.token) if ctx.server else LocalTarget(ctx, semantic=semantic)
    )
    click.get_current_context().call_on_close(target.close)
    return target


def require_database(url: str) -> None:
    """A missing SQLite file is a clear error, not a new empty database.

    Raises:
        CliError: ``url`` is not an SQLAlchemy URL.
        NotFoundError: ``url`` names a SQLite file that does not exist.
    """
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


# -- local -------------------------------------------------------------------------------
class LocalTarget(Target):
    """The tiers named by URL, opened in this process."""

    def __init__(self, ctx: CliContext, *, semantic: bool) -> None:
        cfg = ctx.cache_config()
        if cfg.sql is not None:
            require_database(cfg.sql.url)
            # inspecting must not create or migrate a database behind the user's back
            cfg = replace(cfg, sql=replace(cfg.sql, create_if_empty=False, auto_upgrade=False))
        if not semantic:
            cfg = replace(cfg, embedder=None)  # nothing to embed: skip loading a model
        self.config = cfg
        self._cache: SemanticCache | None = None

    @property
    def cache(self) -> SemanticCache:
        """The opened cache."""
        if self._cache is None:
            from ..cache import SemanticCache
            from ..tiers.sql import SQLBackend

            self._cache = SemanticCache(self.config).open()
            for tier in self._cache.tiers:
                if isinstance(tier, SQLBackend):
                    tier.open()  # a schema problem is an error here, not a silent skip
        return self._cache

    @staticmethod
    def _selector(criteria: Filters) -> Selector:
        from ..keys import build_request
        from ..types import Selector

        keys = list(criteria.keys) if isinstance(criteria, Criteria) else []
        if isinstance(criteria, Criteria) and criteria.prompt is not None:
            keys.append(
                build_request(
                    criteria.prompt,
                    model=criteria.model,
                    params=criteria.params,
                    namespace=criteria.namespace,
                ).key
            )
        return Selector(
            keys=tuple(keys),
            scope=criteria.scope,
            namespace=criteria.namespace,
            model=criteria.model,
            tag=criteria.tag,
            older_than_seconds=criteria.older_than_seconds,
            prompt_pattern=criteria.prompt_pattern,
        )

    def stats(self) -> dict[str, Any]:
        from ..config import redact_url
        from ..db.migrate import current_revision, head_revision
        from ..tiers.base import ProcessMemory
        from ..tiers.redis import RedisBackend
        from ..tiers.sql import SQLBackend

        cache = self.cache
        now = cache.timer()
        health = cache.health()
        has_sql = any(isinstance(t, SQLBackend) for t in cache.tiers)
        tiers: dict[str, dict[str, Any]] = {}
        for t in cache.tiers:
            if isinstance(t, ProcessMemory):
                continue  # this process's own L1 is empty: nothing to report
            # a tier that cannot be reached says so, instead of an empty but normal-looking row
            info: dict[str, Any] = {"status": health.get(t.name, "ok")}
            if info["status"] == "ok" and isinstance(t, SQLBackend):
                info.update(
                    url=redact_url(t.url),
                    entries_live=t.count(now),
                    entries_total=t.count(),
                    schema_revision=current_revision(t.engine),
                    schema_head=head_revision(),
                )
            elif info["status"] == "ok" and isinstance(t, RedisBackend):
                redis = self.config.redis
                info.update(url=None if redis is None else ",".join(redact_url(u.strip()) for u in redis.url.split(",")))
                if redis is not None and redis.cluster:
                    info["cluster"] = True
                if not has_sql:  # L2 is the tier entries are listed from
                    info["entries_live"] = sum(1 for e in t.iter_entries() if not e.expired(now))
            tiers[t.name] = info
        live = [v["entries_live"] for v in tiers.values() if v.get("entries_live") is not None]
        return {"target": "local", "tiers": tiers, "entries": live[-1] if live else None}

    def list(self, filters: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
        from ..admin import entry_view

        sel = self._selector(filters)
        entries = self.cache.list_entries(
            None if sel.is_empty() else sel, limit=limit, offset=offset
        )
        now = self.cache.timer()
        return [entry_view(e, now) for e in entries]

    def show(self, entry_id: str) -> dict[str, Any] | None:
        from ..admin import entry_view

        entry = self.cache.get_entry(entry_id)
        return None if entry is None else entry_view(entry, self.cache.timer(), include_value=True)

    def lookup(self, query: Query) -> dict[str, Any]:
        from ..admin import value_fields
        from ..config import UNSET

        req = self.cache.request(
            query.prompt, model=query.model, params=query.params, namespace=query.namespace
        )
        threshold = UNSET if query.threshold is None else query.threshold
        hit = self.cache.lookup(req, threshold=threshold)
        if hit is None:
            return {"hit": False, "key": req.key}
        return {"key": req.key, "hit": True, **hit.as_dict(), **value_fields(hit.value)}

    def explain(self, query: Query, k: int) -> dict[str, Any]:
        from ..config import UNSET

        return dict(
            self.cache.explain(
                query.prompt,
                model=query.model,
                params=query.params,
                namespace=query.namespace,
                threshold=UNSET if query.threshold is None else query.threshold,
                k=k,
            )
        )

    def count(self, criteria: Criteria) -> int:
        return self.cache.count(self._selector(criteria))

    def count_all(self) -> int:
        return self.cache.count(None)

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
                f"({removed} {'entry' if removed == 1 else 'entries'} removed from the other tiers); run it again once it is back"
            )
        return removed

    def invalidate(self, criteria: Criteria) -> int:
        sel = self._selector(criteria)
        return self._reach_every_tier("invalidation", lambda: self.cache.invalidate_selector(sel))

    def flush(self) -> int:
        return self._reach_every_tier("flush", self.cache.flush)

    def feedback(self, entry_id: str, query: Query, correct: bool, source: str) -> dict[str, Any]:
        q = query
        done = self.cache.feedback(
            None, correct, entry_id=entry_id, prompt=q.prompt, source=source,
            model=q.model, params=q.params, namespace=q.namespace,
        )  # fmt: skip
        return done.as_dict()

    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        return self.cache.rebuild_index(reembed=reembed, progress=progress)

    def index_check(self) -> dict[str, Any]:
        return dict(self.cache.check_index())

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


# -- remote ------------------------------------------------------------------------------
class RemoteTarget(Target):
    """A running sidecar, over its JSON API."""

    remote = True

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
            except (ValueError, KeyError, TypeError):  # not our JSON error shape (a proxy?)
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
    def _criteria_body(criteria: Criteria) -> dict[str, Any]:
        body = criteria.given()
        if "keys" in body:
            body["keys"] = list(body["keys"])
        return body

    def stats(self) -> dict[str, Any]:
        return {"target": self.url, **self._call("GET", "/v1/stats")}

    def list(self, filters: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
        page = {"limit": limit, "offset": offset}
        data = self._call("GET", "/v1/entries", params={**filters.given(), **page})
        return list(data["entries"])

    def show(self, entry_id: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", f"/v1/entries/{entry_id}"))
        except NotFoundError:
            return None

    def lookup(self, query: Query) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/lookup", json=query.body()))

    def explain(self, query: Query, k: int) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/explain", json={**query.body(), "k": k}))

    def count(self, criteria: Criteria) -> int:
        data = self._call(
            "POST", "/v1/invalidate", json={**self._criteria_body(criteria), "dry_run": True}
        )
        return int(data["matched"])

    def count_all(self) -> int:  # every entry is older than 0 s: all the token may reach
        return self.count(Criteria(older_than_seconds=0.0))

    def invalidate(self, criteria: Criteria) -> int:
        return int(
            self._call("POST", "/v1/invalidate", json=self._criteria_body(criteria))["removed"]
        )

    def flush(self) -> int:
        return int(self._call("POST", "/v1/flush")["removed"])

    def feedback(self, entry_id: str, query: Query, correct: bool, source: str) -> dict[str, Any]:
        body = {**query.body(), "entry_id": entry_id, "correct": correct, "source": source}
        return dict(self._call("POST", "/v1/feedback", json=body))

    def index_rebuild(self, reembed: bool, progress: bool) -> int:
        return int(self._call("POST", "/v1/index/rebuild", params={"reembed": reembed})["vectors"])

    def index_check(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/index/check"))

    def close(self) -> None:
        self.client.close()
