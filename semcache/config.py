"""Configuration objects: frozen, keyword-only, validated on construction.

Constructors do no I/O; a cache starts work in ``open()`` or ``with``.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "MAX_TTL_SECONDS",
    "UNSET",
    "CacheConfig",
    "IndexConfig",
    "MemoryConfig",
    "Policy",
    "RedisConfig",
    "SQLConfig",
    "redact_url",
]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: "Use the default": distinct from ``None`` (which, for a TTL, means never expire).
UNSET = _Unset.UNSET


#: The cosine threshold of a cache without a verifier (``Policy.similarity_threshold=None``).
DEFAULT_SIMILARITY_THRESHOLD = 0.95


#: The longest TTL accepted (100 years): anything longer is "never", say ``None``.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600.0


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _check_ttl(name: str, value: float | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= MAX_TTL_SECONDS
    ):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (at most {MAX_TTL_SECONDS:.0f}) or None, got {value!r}"
        )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MemoryConfig:
    """L1: in-process memory, bounded by entry count and by bytes (LRU eviction)."""

    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    max_ttl_seconds: float | None = None

    def __post_init__(self) -> None:
        _check_positive_int("MemoryConfig.max_entries", self.max_entries)
        _check_positive_int("MemoryConfig.max_bytes", self.max_bytes)
        _check_ttl("MemoryConfig.max_ttl_seconds", self.max_ttl_seconds)


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """L2: Redis, shared by every process. ``url`` is a redis:// or rediss:// URL.

    ``cluster=True`` speaks to a Redis Cluster through redis-py's ``RedisCluster``;
    ``url`` names one node to start from, or several, comma-separated
    (``redis://a:7000,redis://b:7001``).
    """

    url: str
    prefix: str = "semcache:"
    #: A Redis Cluster (``RedisCluster``), not a single server.
    cluster: bool = False
    max_ttl_seconds: float | None = None
    socket_timeout_seconds: float = 0.5
    #: Carry invalidations and index updates to other replicas over Redis pub/sub.
    pubsub: bool = True
    #: How long a delete's tombstone refuses older writes and stale promotions.
    tombstone_ttl_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not self.cluster and "," in self.url:
            raise ConfigurationError("several Redis URLs name a cluster: set RedisConfig(cluster=True)")
        scheme = urlsplit(self.url.split(",")[0].strip()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"unknown Redis URL scheme {scheme!r}: use redis://host:port/db, rediss:// or unix://"
            )
        _check_ttl("RedisConfig.max_ttl_seconds", self.max_ttl_seconds)
        if self.socket_timeout_seconds <= 0:
            raise ConfigurationError("RedisConfig.socket_timeout_seconds must be positive")

    def __repr__(self) -> str:
        url = ",".join(redact_url(u.strip()) for u in self.url.split(","))
        return (
            f"RedisConfig(url={url!r}, prefix={self.prefix!r}, cluster={self.cluster!r}, "
            f"max_ttl_seconds={self.max_ttl_seconds!r})"
        )


@dataclass(frozen=True, kw_only=True)
class SQLConfig:
    """L3: SQL through SQLAlchemy 2 (``sqlite:///path.db`` or ``postgresql+psycopg://...``).

    A new, empty database is created by running the Alembic revisions when
    ``create_if_empty`` is true; a database at an older revision raises
    :class:`~semcache.errors.SchemaVersionError` unless ``auto_upgrade`` is true.
    """

    url: str = "sqlite:///semcache.db"
    max_ttl_seconds: float | None = None
    create_if_empty: bool = True
    auto_upgrade: bool = False
    echo: bool = False
    #: The longest a call waits to connect or for a pooled connection (PostgreSQL).
    timeout_seconds: float = 5.0
    #: How long tombstones of deletes stay in L3, refusing replays of older writes.
    tombstone_retention_seconds: float = 7 * 24 * 3600.0
    #: How long the change log (what replicas and recovering tiers catch up from) is kept.
    log_retention_seconds: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_seconds, (int, float)) and 0 < self.timeout_seconds < math.inf):
            raise ConfigurationError("SQLConfig.timeout_seconds must be a positive number of seconds")
        scheme = urlsplit(self.url).scheme.split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ConfigurationError(
                f"unknown SQL URL scheme {scheme!r}: use sqlite:///path.db or postgresql+psycopg://user@host/db"
            )
        _check_ttl("SQLConfig.max_ttl_seconds", self.max_ttl_seconds)

    def __repr__(self) -> str:
        return f"SQLConfig(url={redact_url(self.url)!r}, max_ttl_seconds={self.max_ttl_seconds!r})"


IndexBackendName = Literal["auto", "faiss", "pgvector"]


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """The vector index.

    ``backend``: ``"faiss"``, the in-process index (exact inner product per scope,
    HNSW once a scope is large), rebuilt from L3 at start and kept in step by replica
    events; ``"pgvector"``, an HNSW index inside the L3 PostgreSQL, written in the
    entry's own transaction and shared by every replica (no rebuild, no vectors over
    pub/sub); ``"auto"`` (the default): pgvector when L3 is PostgreSQL with the
    ``vector`` extension installed, else FAISS.
    """

    backend: IndexBackendName = "auto"
    hnsw_min_entries: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 96
    #: How an in-process HNSW scope stores its vectors: ``"sq8"`` (the graph walk on
    #: 8-bit codes, its candidates re-scored on a 16-bit copy: about 1.2 KB a vector
    #: at dim 384, similarities within ~1e-6 of the float32 ones) or ``"float32"``
    #: (the float32 vectors in the graph: about 1.9 KB). Small scopes (flat, exact)
    #: always keep float32.
    hnsw_storage: Literal["sq8", "float32"] = "sq8"
    #: Candidates fetched per search (more than one: the nearest may fail a guard).
    top_k: int = 4
    #: Rebuild a scope's HNSW graph once this share of its ids are deleted.
    compact_ratio: float = 0.25
    #: Build a scope's HNSW graph (and compactions) in a background thread while the
    #: old index keeps serving; ``False`` builds in the calling thread.
    background_rebuild: bool = True
    #: OpenMP threads FAISS may use (process-wide). 1 by default: for single-query
    #: searches on a busy 2-core machine, 2 threads measured 15x slower than 1
    #: (OpenMP spin-waits against the other work).
    faiss_threads: int = 1
    #: Show a progress bar while rebuilding (None: only when stderr is a terminal).
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "faiss", "pgvector"):
            raise ConfigurationError(
                f"IndexConfig.backend must be 'auto', 'faiss' or 'pgvector', got {self.backend!r}"
            )
        for name in ("hnsw_min_entries", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "top_k", "faiss_threads"):
            _check_positive_int(f"IndexConfig.{name}", getattr(self, name))
        if not 0 < self.compact_ratio < 1:
            raise ConfigurationError("IndexConfig.compact_ratio must be in (0, 1)")
        if self.hnsw_storage not in ("sq8", "float32"):
            raise ConfigurationError(f"IndexConfig.hnsw_storage must be 'sq8' or 'float32', got {self.hnsw_storage!r}")


LongPrompt = Literal["exact_only", "truncate", "error"]
OnBackendError = Literal["miss", "raise"]


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Decisions: TTLs, thresholds, guards, expiry and failure handling."""

    default_ttl_seconds: float | None = 7 * 24 * 3600
    #: A cosine similarity every semantic candidate must reach. ``None`` (the default):
    #: with the verifier on, ``similarity_floor`` decides which candidates it scores;
    #: with it off, :data:`DEFAULT_SIMILARITY_THRESHOLD`. Set (here, per namespace or
    #: per call), it applies on top of the floor and the verifier.
    similarity_threshold: float | None = None
    #: Per-namespace thresholds, overriding ``similarity_threshold``.
    namespace_thresholds: Mapping[str, float] = field(default_factory=dict)
    #: The pair verifier that reads the query and a candidate's prompt together before
    #: a semantic hit is served: ``"default"`` (the model shipped with semcache),
    #: ``None``/``False`` (off: cosine similarity alone decides), a
    #: :class:`~semcache.verify.PairVerifier`, a callable ``pairs -> scores`` or a
    #: sentence-transformers cross-encoder name or path.
    verifier: Any = "default"
    #: The false-hit rate to stay under: the share of prompts that should miss which
    #: are served a cached answer. The verifier's score threshold comes from its
    #: calibration for this rate (per namespace where it has a table).
    max_false_hit_rate: float = 0.01
    #: A raw verifier score threshold in [0, 1], overriding the calibration.
    verifier_threshold: float | None = None
    #: A calibration (a JSON path or a :class:`~semcache.verify.Calibration`, see
    #: ``semcache calibrate``) overriding the one the verifier ships with.
    verifier_calibration: Any = None
    #: The cosine similarity a candidate needs before the verifier scores it.
    similarity_floor: float = 0.75
    #: How many candidates (nearest first, past the floor and the guards) the verifier
    #: scores per lookup.
    verifier_top_k: int = 3
    #: How the calibration picks the threshold for ``max_false_hit_rate``: ``"upper"``,
    #: the lowest threshold whose false-hit rate's one-sided 95% upper bound meets the
    #: target (the rate is reached with that confidence on the labels); ``"measured"``,
    #: the lowest whose measured rate does (more hits, and a rate that runs higher on
    #: new data: about twice the measured one on held-out PAWS pairs).
    calibration_bound: Literal["upper", "measured"] = "upper"
    #: Guard names (see :mod:`semcache.guards`); ``None`` means the measured defaults.
    guards: tuple[str, ...] | None = None
    semantic: bool = True
    #: What to do with prompts longer than the embedder's window: keep them exact-only
    #: (no semantic match on a truncated text), embed the truncated text, or raise.
    long_prompt: LongPrompt = "exact_only"
    sliding_expiry: bool = False
    #: How often a background thread deletes expired rows from L3 (and their vectors);
    #: ``None`` leaves it to explicit ``sweep()`` calls. Expired entries are never
    #: served either way: this only reclaims space.
    sweep_interval_seconds: float | None = 600.0
    on_backend_error: OnBackendError = "miss"
    #: A tier that failed is skipped for this long, doubling per failure up to the
    #: max; then one call probes it. A second at most, so a tier that is back is used
    #: again within about a second.
    backoff_initial_seconds: float = 0.25
    backoff_max_seconds: float = 1.0
    #: How often each replica reads L3's change log (writes and invalidations made by
    #: other replicas, including those pub/sub could not carry) and applies it to its
    #: L1 and index; also how often it checks for a hand-off to drain. ``None``: never.
    log_poll_seconds: float | None = 1.0
    #: The share of semantic hits whose request is also sent to the LLM in the
    #: background (the caller is answered from the cache at once), the fresh answer
    #: compared with the cached one by the verifier and kept as a ``source="llm"``
    #: feedback label (see :mod:`semcache.audit`). 0 (the default): off. Each audit is
    #: one more LLM call.
    audit_rate: float = 0.0
    #: The verifier score (fresh answer vs cached answer) at or above which an audit
    #: counts the hit as correct. A heuristic: two good answers may be worded apart.
    audit_agreement: float = 0.5
    #: Whether an audit that disagrees blocks the pairing, as a user's wrong report
    #: does. Off by default: a disagreement is only kept as a label.
    audit_block: bool = False
    #: Audits running at once; a hit sampled while this many run is not audited
    #: (counted as dropped).
    audit_concurrency: int = 4

    def __post_init__(self) -> None:
        _check_ttl("Policy.default_ttl_seconds", self.default_ttl_seconds)
        cosines = [*self.namespace_thresholds.items(), ("similarity_floor", self.similarity_floor)]
        if self.similarity_threshold is not None:
            cosines.append(("similarity_threshold", self.similarity_threshold))
        for name, t in cosines:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (-1.0 <= t <= 1.0):
                raise ConfigurationError(f"threshold for {name} must be a cosine similarity in [-1, 1], got {t!r}")
        v = self.verifier
        if not (v is None or v is False or (isinstance(v, str) and v.strip()) or callable(v) or hasattr(v, "score")):
            raise ConfigurationError(
                "Policy.verifier must be 'default', None/False, a cross-encoder name or path, "
                f"a PairVerifier or a callable, got {v!r}"
            )
        r = self.max_false_hit_rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 0.5:
            raise ConfigurationError(f"Policy.max_false_hit_rate must be in (0, 0.5], got {r!r}")
        vt = self.verifier_threshold
        if vt is not None and (isinstance(vt, bool) or not isinstance(vt, (int, float)) or not 0.0 <= vt <= 1.0):
            raise ConfigurationError(f"Policy.verifier_threshold must be a score in [0, 1] or None, got {vt!r}")
        if self.calibration_bound not in ("upper", "measured"):
            raise ConfigurationError("Policy.calibration_bound must be 'upper' or 'measured'")
        k = self.verifier_top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10:
            raise ConfigurationError(f"Policy.verifier_top_k must be an integer in 1..10, got {k!r}")
        c = self.verifier_calibration
        if not (c is None or isinstance(c, (str, os.PathLike, Mapping)) or hasattr(c, "threshold_for")):
            raise ConfigurationError(
                f"Policy.verifier_calibration must be a JSON path or a Calibration, got {type(c).__name__}"
            )
        if self.sweep_interval_seconds is not None and not (
            isinstance(self.sweep_interval_seconds, (int, float)) and 0 < self.sweep_interval_seconds < math.inf
        ):
            raise ConfigurationError("Policy.sweep_interval_seconds must be a positive number of seconds or None")
        for name in ("audit_rate", "audit_agreement"):
            a = getattr(self, name)
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
                raise ConfigurationError(f"Policy.{name} must be a number in [0, 1], got {a!r}")
        if not isinstance(self.audit_block, bool):
            raise ConfigurationError(f"Policy.audit_block must be True or False, got {self.audit_block!r}")
        _check_positive_int("Policy.audit_concurrency", self.audit_concurrency)
        if self.long_prompt not in ("exact_only", "truncate", "error"):
            raise ConfigurationError("Policy.long_prompt must be 'exact_only', 'truncate' or 'error'")
        if self.on_backend_error not in ("miss", "raise"):
            raise ConfigurationError("Policy.on_backend_error must be 'miss' or 'raise'")
        if not (
            math.isfinite(self.backoff_initial_seconds)
            and math.isfinite(self.backoff_max_seconds)
            and 0 < self.backoff_initial_seconds <= self.backoff_max_seconds
        ):
            raise ConfigurationError("back-off must satisfy 0 < initial <= max")


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("none", "never"):
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """The whole cache: which tiers, the index, the embedder and the policy.

    Any tier may be ``None``. The embedded default is L1 + L3 on SQLite with an
    in-process index and needs no server; naming a Redis URL adds L2.
    ``embedder`` is ``"default"`` (all-MiniLM-L6-v2, ONNX when available), ``None``
    (exact matching only), a sentence-transformers model name or path, or any object
    implementing :class:`~semcache.embedders.base.Embedder`.
    """

    memory: MemoryConfig | None = field(default_factory=MemoryConfig)
    redis: RedisConfig | None = None
    sql: SQLConfig | None = field(default_factory=SQLConfig)
    #: An :class:`IndexConfig`, or just its backend's name (``"faiss"``, ``"pgvector"``, ``"auto"``).
    index: IndexConfig = field(default_factory=IndexConfig)
    embedder: Any = "default"
    policy: Policy = field(default_factory=Policy)
    #: USD per million tokens by model, to report money saved by hits (see :mod:`semcache.pricing`).
    prices: Any = None

    def __post_init__(self) -> None:
        if self.memory is None and self.redis is None and self.sql is None:
            raise ConfigurationError("configure at least one tier (memory, redis or sql)")
        if isinstance(self.index, str):
            object.__setattr__(self, "index", IndexConfig(backend=cast(IndexBackendName, self.index)))
        elif not isinstance(self.index, IndexConfig):
            raise ConfigurationError(f"index must be an IndexConfig or a backend name, got {self.index!r}")
        if self.prices is not None:
            from .pricing import PriceTable

            if not isinstance(self.prices, PriceTable):
                object.__setattr__(self, "prices", PriceTable(self.prices))

    @classmethod
    def from_urls(
        cls,
        *,
        redis_url: str | None = None,
        sql_url: str | None = "sqlite:///semcache.db",
        memory: bool = True,
        **kwargs: Any,
    ) -> CacheConfig:
        """Build a config from tier URLs (``None`` leaves a tier out)."""
        return cls(
            memory=MemoryConfig() if memory else None,
            redis=RedisConfig(url=redis_url) if redis_url else None,
            sql=SQLConfig(url=sql_url) if sql_url else None,
            **kwargs,
        )

    @classmethod
    def from_env(cls, prefix: str = "SEMCACHE_", environ: Mapping[str, str] | None = None) -> CacheConfig:
        """Build a config from environment variables.

        ``{prefix}REDIS_URL``, ``{prefix}SQL_URL`` (``none`` to leave L3 out),
        ``{prefix}L1`` (``0`` to leave L1 out), ``{prefix}L1_MAX_ENTRIES``,
        ``{prefix}TTL_SECONDS``, ``{prefix}THRESHOLD``, ``{prefix}EMBEDDER``
        (``default``, ``none`` or a model name), ``{prefix}VERIFIER`` (``default``,
        ``none`` or a cross-encoder name or path), ``{prefix}MAX_FALSE_HIT_RATE``,
        ``{prefix}VERIFIER_THRESHOLD``, ``{prefix}VERIFIER_CALIBRATION`` (a JSON path),
        ``{prefix}AUDIT_RATE``, ``{prefix}AUDIT_AGREEMENT``, ``{prefix}AUDIT_BLOCK`` (``1``/``0``),
        ``{prefix}INDEX`` (``auto``, ``faiss`` or ``pgvector``) and
        ``{prefix}REDIS_CLUSTER`` (``1``: the Redis URL names a cluster's nodes).
        """
        env = os.environ if environ is None else environ
        sql_url = env.get(prefix + "SQL_URL", "sqlite:///semcache.db")
        memory = env.get(prefix + "L1", "1") not in ("0", "false", "no")
        mem_entries = env.get(prefix + "L1_MAX_ENTRIES")
        policy_kwargs: dict[str, Any] = {}
        if (prefix + "TTL_SECONDS") in env:
            policy_kwargs["default_ttl_seconds"] = _env_float(env, prefix + "TTL_SECONDS")
        thr = _env_float(env, prefix + "THRESHOLD")
        if thr is not None:
            policy_kwargs["similarity_threshold"] = thr
        verifier = env.get(prefix + "VERIFIER", "").strip()
        if verifier:
            policy_kwargs["verifier"] = None if verifier.lower() in ("none", "off", "false", "0") else verifier
        for var, name in (
            ("MAX_FALSE_HIT_RATE", "max_false_hit_rate"),
            ("VERIFIER_THRESHOLD", "verifier_threshold"),
            ("AUDIT_RATE", "audit_rate"),
            ("AUDIT_AGREEMENT", "audit_agreement"),
        ):
            value = _env_float(env, prefix + var)
            if value is not None:
                policy_kwargs[name] = value
        block = env.get(prefix + "AUDIT_BLOCK", "").strip().lower()
        if block:
            if block not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigurationError(f"{prefix}AUDIT_BLOCK must be 1 or 0, got {block!r}")
            policy_kwargs["audit_block"] = block in ("1", "true", "yes", "on")
        calibration = env.get(prefix + "VERIFIER_CALIBRATION", "").strip()
        if calibration:
            policy_kwargs["verifier_calibration"] = calibration
        embedder: Any = env.get(prefix + "EMBEDDER", "default")
        if embedder.lower() == "none":
            embedder = None
        cluster = env.get(prefix + "REDIS_CLUSTER", "").strip().lower()
        if cluster and cluster not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigurationError(f"{prefix}REDIS_CLUSTER must be 1 or 0, got {cluster!r}")
        index = env.get(prefix + "INDEX", "auto").strip().lower() or "auto"
        return cls(
            memory=(MemoryConfig(max_entries=int(mem_entries)) if mem_entries else MemoryConfig()) if memory else None,
            redis=RedisConfig(url=env[prefix + "REDIS_URL"], cluster=cluster in ("1", "true", "yes", "on"))
            if env.get(prefix + "REDIS_URL")
            else None,
            index=IndexConfig(backend=cast(IndexBackendName, index)),
            sql=SQLConfig(url=sql_url) if sql_url.lower() != "none" else None,
            embedder=embedder,
            policy=Policy(**policy_kwargs),
        )
