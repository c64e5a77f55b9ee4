"""Sidecar configuration: one frozen object built from arguments, ``SEMCACHE_…`` variables and a file.

Precedence, highest first: explicit arguments (the CLI's flags), environment variables,
the optional TOML or JSON file, then the defaults. Every setting has one name, used
lower-case in the file and upper-case with the ``SEMCACHE_`` prefix in the environment::

    host = "127.0.0.1"            # SEMCACHE_HOST
    port = 8080                   # SEMCACHE_PORT
    redis_url = "redis://…"       # SEMCACHE_REDIS_URL   (adds L2)
    redis_cluster = false         # SEMCACHE_REDIS_CLUSTER (redis_url names a Redis Cluster's nodes)
    sql_url = "sqlite:///semcache.db"   # SEMCACHE_SQL_URL ("none" leaves L3 out)
    index = "auto"                # SEMCACHE_INDEX (auto | faiss | pgvector)
    admin_token = "…"             # SEMCACHE_ADMIN_TOKEN
    upstream_url = "https://api.openai.com/v1"   # SEMCACHE_UPSTREAM_URL
    [tokens]                      # SEMCACHE_TOKENS="tok1=tenant-a,tok2=tenant-b"
    "tok1" = "tenant-a"

Secrets (tokens, API keys, passwords inside URLs) never appear in ``repr`` or in
:meth:`ServerConfig.describe`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import CacheConfig, redact_url
from ..errors import ConfigurationError

__all__ = ["ServerConfig", "load_settings"]

ENV_PREFIX = "SEMCACHE_"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SECRET = "***"


def _to_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _to_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}")
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from exc


def _to_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ConfigurationError(f"{name} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc
    if math.isnan(value) or math.isinf(value):
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
    return value


def _to_optional_str(name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw).strip()
    return text or None


def _to_tokens(name: str, raw: Any) -> dict[str, str]:
    """``{"token": "tenant"}`` from a mapping or from ``"tok1=tenant-a,tok2=tenant-b"``."""
    if isinstance(raw, Mapping):
        pairs = [(str(k), str(v)) for k, v in raw.items()]
    else:
        pairs = []
        for item in str(raw).split(","):
            item = item.strip()
            if not item:
                continue
            # the last "=": base64 tokens end in "=" padding, tenant names have none
            token, sep, tenant = item.rpartition("=")
            if not sep:
                raise ConfigurationError(
                    f"{name}: each item must be TOKEN=TENANT, got one without '='"
                )
            pairs.append((token.strip(), tenant.strip()))
    out: dict[str, str] = {}
    for token, tenant in pairs:
        if not token or not tenant:
            raise ConfigurationError(f"{name}: tokens and tenant names must be non-empty")
        out[token] = tenant
    return out


def _to_prices(name: str, raw: Any) -> dict[str, tuple[float, float]]:
    """``{"model": (input $/1M tokens, output $/1M tokens)}`` from a mapping or ``"m=0.15/0.6,…"``."""
    items: list[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        items = []
        for item in str(raw).split(","):
            if item.strip():
                model_name, sep, pair = item.partition("=")
                if not sep:
                    raise ConfigurationError(f"{name}: each item must be MODEL=INPUT/OUTPUT")
                items.append((model_name.strip(), pair.split("/")))
    out: dict[str, tuple[float, float]] = {}
    for model, price in items:
        if isinstance(price, (int, float)):
            price = [price, price]
        if not isinstance(price, (list, tuple)) or len(price) != 2:
            raise ConfigurationError(
                f"{name}: the price of {model!r} must be [input, output] dollars per 1M tokens"
            )
        out[str(model)] = (_to_float(name, price[0]), _to_float(name, price[1]))
    return out


#: Every setting: name -> parser. Names are the file keys and, upper-cased, the env suffixes.
_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "host": lambda n, v: str(v),
    "port": _to_int,
    "auth": _to_bool,
    "tokens": _to_tokens,
    "admin_token": _to_optional_str,
    "max_body_bytes": _to_int,
    "upstream_url": _to_optional_str,
    "upstream_api_key": _to_optional_str,
    "upstream_timeout_seconds": _to_float,
    "batching": _to_bool,
    "batch_window_ms": _to_float,
    "batch_max": _to_int,
    "batch_concurrency": _to_int,
    "prices": _to_prices,
    "log_level": lambda n, v: str(v).lower(),
    "access_log": _to_bool,
    "tenant_metrics_limit": _to_int,
    # cache settings, with the same names as CacheConfig.from_env
    "redis_url": _to_optional_str,
    "redis_prefix": lambda n, v: str(v),
    "redis_cluster": _to_bool,
    "sql_url": lambda n, v: str(v),
    "index": lambda n, v: str(v).strip().lower(),
    "l1": _to_bool,
    "l1_max_entries": _to_int,
    "ttl_seconds": lambda n, v: v,
    "threshold": _to_float,
    "embedder": lambda n, v: v,
    "verifier": lambda n, v: v,
    "max_false_hit_rate": _to_float,
    "verifier_threshold": _to_float,
    "verifier_calibration": _to_optional_str,
    "audit_rate": _to_float,
    "audit_agreement": _to_float,
    "audit_block": _to_bool,
}
_CACHE_KEYS = (
    "redis_url",
    "redis_prefix",
    "redis_cluster",
    "sql_url",
    "index",
    "l1",
    "l1_max_entries",
    "ttl_seconds",
    "threshold",
    "embedder",
    "verifier",
    "max_false_hit_rate",
    "verifier_threshold",
    "verifier_calibration",
    "audit_rate",
    "audit_agreement",
    "audit_block",
)


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON file of settings; a ``[semcache]`` table may wrap them."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the config file {p}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"the config file {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"the config file {p} must hold a table of settings")
    if isinstance(data.get("semcache"), dict):
        data = data["semcache"]
    return dict(data)


def load_settings(
    *,
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    prefix: str = ENV_PREFIX,
) -> dict[str, Any]:
    """Merge file, environment and explicit settings (later wins) into one parsed dict.

    Raises:
        ConfigurationError: an unknown key in the file, or a value that does not parse.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if file is None and env.get(prefix + "CONFIG"):
        file = env[prefix + "CONFIG"]
    if file is not None:
        data = _read_file(file)
        unknown = sorted(set(data) - set(_SETTINGS))
        if unknown:
            raise ConfigurationError(f"unknown setting(s) in {file}: {', '.join(unknown)}")
        merged.update(data)
    for name in _SETTINGS:
        raw = env.get(prefix + name.upper())
        if raw is not None and raw != "":
            merged[name] = raw
    for name, value in (overrides or {}).items():
        if name not in _SETTINGS:
            raise ConfigurationError(f"unknown setting {name!r}")
        if value is not None:
            merged[name] = value
    return {
        name: _SETTINGS[name](f"{prefix}{name.upper()}", value) for name, value in merged.items()
    }


def _cache_config(settings: Mapping[str, Any]) -> CacheConfig:
    """Build the cache's config through ``CacheConfig.from_env`` so both read the same names."""
    env: dict[str, str] = {}
    for key in _CACHE_KEYS:
        if key not in settings or key == "embedder":
            continue
        value = settings[key]
        if value is None:
            value = "none" if key in ("sql_url", "ttl_seconds", "verifier") else ""
        elif isinstance(value, bool):
            value = "1" if value else "0"
        env[ENV_PREFIX + key.upper()] = str(value)
    cfg = CacheConfig.from_env(environ=env)
    if "redis_prefix" in settings and cfg.redis is not None:
        cfg = replace(cfg, redis=replace(cfg.redis, prefix=settings["redis_prefix"]))
    if "embedder" in settings:
        cfg = replace(cfg, embedder=_embedder_choice(settings["embedder"]))
    return cfg


def _redis_description(redis: Any) -> str:
    """L2's URL(s), redacted; ``cluster`` first for a Redis Cluster."""
    urls = ",".join(redact_url(u.strip()) for u in redis.url.split(","))
    return f"cluster {urls}" if redis.cluster else urls


def _embedder_choice(value: Any) -> Any:
    """``default``, ``none``, ``hashing[:DIM]`` (a toy for demos and tests) or a model name."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() == "none":
        return None
    if text.lower().startswith("hashing"):
        from ..embedders import HashingEmbedder

        _, _, dim = text.partition(":")
        return HashingEmbedder(_to_int("SEMCACHE_EMBEDDER", dim) if dim else 64)
    return text or "default"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything the sidecar needs: the cache's config plus HTTP, auth, upstream and batching.

    ``tokens`` maps a bearer token to the tenant (namespace) it is confined to;
    ``admin_token`` may act on every tenant. ``auth=False`` switches auth off (every
    caller is admin) and must be chosen explicitly.
    """

    cache: CacheConfig = field(default_factory=CacheConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    auth: bool = True
    tokens: Mapping[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    #: Request bodies above this many bytes are answered 413.
    max_body_bytes: int = 1024 * 1024
    #: OpenAI-compatible base URL the proxy forwards misses to (``…/v1``); ``None``: cache-only.
    upstream_url: str | None = None
    #: Key sent upstream; ``None`` forwards the caller's own ``Authorization`` when it is not a semcache token.
    upstream_api_key: str | None = None
    upstream_timeout_seconds: float = 120.0
    #: Micro-batch concurrent lookups into one embedding call.
    batching: bool = True
    batch_window_ms: float = 2.0
    batch_max: int = 32
    #: Batches embedded at once (each in its own worker thread).
    batch_concurrency: int = 2
    #: Dollars per 1M (input, output) tokens by model, for the money-saved counter.
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    log_level: str = "info"
    access_log: bool = False
    #: Tenants with their own ``tenant`` label in the per-tenant metrics: the configured
    #: tenants first, then namespaces in the order first seen; the rest share ``_other``.
    tenant_metrics_limit: int = 50

    def __post_init__(self) -> None:
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port <= 65535
        ):
            raise ConfigurationError(f"port must be in 0..65535, got {self.port!r}")
        if self.max_body_bytes <= 0:
            raise ConfigurationError("max_body_bytes must be positive")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ConfigurationError("batch_window_ms must be in [0, 1000]")
        if isinstance(self.tenant_metrics_limit, bool) or not isinstance(self.tenant_metrics_limit, int) or not 0 <= self.tenant_metrics_limit <= 10_000:
            raise ConfigurationError(f"tenant_metrics_limit must be in 0..10000, got {self.tenant_metrics_limit!r}")
        if self.batch_max < 1 or self.batch_concurrency < 1:
            raise ConfigurationError("batch_max and batch_concurrency must be at least 1")
        if self.upstream_timeout_seconds <= 0:
            raise ConfigurationError("upstream_timeout_seconds must be positive")
        if self.upstream_url is not None and urlsplit(self.upstream_url).scheme not in (
            "http",
            "https",
        ):
            raise ConfigurationError(
                f"upstream_url must be an http(s) URL, got {redact_url(self.upstream_url)!r}"
            )
        if self.admin_token is not None and self.admin_token in self.tokens:
            raise ConfigurationError("the admin token must not also be a tenant token")
        if self.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ConfigurationError(f"unknown log level {self.log_level!r}")

    @classmethod
    def load(
        cls,
        *,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        cache: CacheConfig | None = None,
        **overrides: Any,
    ) -> ServerConfig:
        """Build a config from a file, ``SEMCACHE_…`` variables and keyword overrides (in that order).

        Args:
            file: a TOML or JSON settings file (default: ``$SEMCACHE_CONFIG`` if set).
            environ: the environment to read (default ``os.environ``).
            cache: a ready :class:`~semcache.config.CacheConfig`, replacing the cache settings.
            overrides: settings by name; ``None`` values are ignored.

        Raises:
            ConfigurationError: an unknown setting or a value that does not parse.
        """
        settings = load_settings(file=file, environ=environ, overrides=overrides)
        cache_cfg = cache if cache is not None else _cache_config(settings)
        own = {f.name for f in fields(cls)} - {"cache"}
        kwargs = {k: v for k, v in settings.items() if k in own}
        return cls(cache=cache_cfg, **kwargs)

    @classmethod
    def from_env(
        cls, prefix: str = ENV_PREFIX, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Build a config from ``{prefix}…`` environment variables only."""
        settings = load_settings(environ=environ, prefix=prefix)
        own = {f.name for f in fields(cls)} - {"cache"}
        return cls(cache=_cache_config(settings), **{k: v for k, v in settings.items() if k in own})

    @property
    def loopback(self) -> bool:
        """Whether the sidecar listens on a loopback address only."""
        return self.host in _LOOPBACK

    @property
    def url(self) -> str:
        """The base URL the sidecar listens on (as configured)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary with every secret redacted (for logs and ``serve``)."""
        c = self.cache
        return {
            "listen": self.url,
            "tiers": {
                "l1": None if c.memory is None else {"max_entries": c.memory.max_entries},
                "l2": None if c.redis is None else _redis_description(c.redis),
                "l3": None if c.sql is None else redact_url(c.sql.url),
            },
            "index": None if c.embedder is None or not c.policy.semantic else c.index.backend,
            "embedder": _embedder_name(c.embedder),
            "verifier": None if c.embedder is None or not c.policy.semantic else _verifier_name(c.policy.verifier),
            "audit_rate": c.policy.audit_rate,
            "auth": self.auth,
            "tenants": sorted(set(self.tokens.values())),
            "tokens": len(self.tokens),
            "admin_token": _SECRET if self.admin_token else None,
            "max_body_bytes": self.max_body_bytes,
            "upstream_url": None if self.upstream_url is None else redact_url(self.upstream_url),
            "upstream_api_key": _SECRET if self.upstream_api_key else None,
            "batching": {
                "enabled": self.batching,
                "window_ms": self.batch_window_ms,
                "max": self.batch_max,
                "concurrency": self.batch_concurrency,
            },
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"ServerConfig({shown})"


def _verifier_name(choice: Any) -> str | None:
    if choice is None or choice is False:
        return None
    if isinstance(choice, str):
        return choice
    return str(getattr(choice, "verifier_id", type(choice).__name__))


def _embedder_name(choice: Any) -> str | None:
    if choice is None or isinstance(choice, str):
        return choice
    return str(getattr(choice, "model_id", type(choice).__name__))
