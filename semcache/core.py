"""The state every part of the cache shares: configuration, clock, tiers, embedder,
index and counters, with the pure helpers the read and write paths both use."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from cachetools import LRUCache

from . import tracing
from .chain import TierChain
from .config import DEFAULT_SIMILARITY_THRESHOLD, MAX_TTL_SECONDS, UNSET, CacheConfig
from .errors import BackendError, ConfigurationError, InvalidInputError, SerializationError, VerifierError
from .index.base import VectorIndex
from .keys import Request
from .stats import Counters, NamespaceCounters
from .types import Entry, Hit

if TYPE_CHECKING:
    from .verify.base import PairVerifier
    from .verify.calibration import Calibration

__all__ = ["Core", "validate_threshold", "validate_ttl"]

log = logging.getLogger("semcache")

#: A verifier failure is logged at most this often (each one is counted).
_VERIFIER_LOG_SECONDS = 60.0


def validate_ttl(ttl: Any) -> float | None:
    """A TTL in seconds, or ``None`` for never."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise InvalidInputError(f"ttl_seconds must be a positive number of seconds or None, got {ttl!r}")
    if not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidInputError(
            f"ttl_seconds must be in (0, {MAX_TTL_SECONDS:.0f}] (None means never expire), got {ttl!r}"
        )
    return float(ttl)


def validate_threshold(t: Any) -> float:
    """A cosine similarity in [-1, 1]."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or not -1.0 <= t <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine similarity in [-1, 1], got {t!r}")
    return float(t)


class Core:
    """Shared state of one cache; the read, write, index and replica parts hold it."""

    def __init__(self, config: CacheConfig, timer: Callable[[], float], chain: TierChain, stats: Counters) -> None:
        self.config = config
        self.timer = timer
        self.chain = chain
        self.stats = stats
        #: The lookups, hits, writes and savings of each namespace (tenant).
        self.tenants = NamespaceCounters()
        self.embedder: Any = None
        self.index: VectorIndex | None = None
        self.guards: list[Any] = []
        self.index_built = False
        self._recent: LRUCache[str, np.ndarray] = LRUCache(maxsize=256)
        self._recent_lock = threading.Lock()
        #: Called with keys whose stored value cannot be read: they are removed everywhere.
        self.on_corrupt: Callable[[list[str]], None] = lambda keys: None
        #: Whether a (request key, entry key) pairing must not be served semantically
        #: (feedback marked it wrong): such a candidate is skipped.
        self.blocked: Callable[[str, str], bool] = lambda request_key, entry_key: False
        #: The pair verifier of the semantic path (``None``: off), and its calibration.
        self.verifier: PairVerifier | None = None
        self.calibration: Calibration | None = None
        self._verifier_thresholds: dict[str | None, float] = {}
        self._verifier_logged = -math.inf

    def load_semantic(self, choice: Any) -> None:
        """Load the embedder, guards, index and verifier (nothing when ``choice`` is
        ``None`` or semantic matching is off). The verifier loads its model on first use."""
        if choice is None or not self.config.policy.semantic:
            return
        from .embedders import resolve_embedder
        from .guards import build_guards

        self.guards = build_guards(self.config.policy.guards)
        self.embedder = resolve_embedder(choice)
        self.load_verifier()  # after the embedder: the default verifier shares its forward pass
        self.index = self.make_index()

    def make_index(self) -> VectorIndex:
        """The index ``IndexConfig.backend`` names: pgvector in L3, or FAISS in process.

        ``auto`` takes pgvector when L3 is PostgreSQL holding the vectors table (the
        extension is installed and the revision made it), and FAISS otherwise —
        including when L3 cannot be reached at open, which is logged.

        Raises:
            ConfigurationError: ``pgvector`` was asked for and L3 cannot give it; the
                message says what to run.
        """
        from .index.faiss import FaissIndex

        want = self.config.index.backend
        dim = int(self.embedder.dim)
        store = self.chain.store
        on_pg = store is not None and str(getattr(store, "url", "")).startswith("postgresql")
        if want == "faiss" or (want == "auto" and not on_pg):
            return FaissIndex(dim, self.config.index)
        if want == "pgvector" and not on_pg:
            raise ConfigurationError(self._no_pgvector(store))
        from .index.pgvector import PgVectorIndex

        if not getattr(store, "opened", False):
            if want == "auto":
                log.warning("L3 could not be reached at open: the in-process index is used (reopen to use pgvector)")
                return FaissIndex(dim, self.config.index)
            log.warning("L3 could not be reached at open: semantic lookups miss until it answers")
        elif not getattr(store, "has_vectors", False):
            if want == "auto":
                return FaissIndex(dim, self.config.index)
            raise ConfigurationError(self._no_pgvector(store))
        self.index_built = True  # nothing to rebuild: the index is L3's
        return PgVectorIndex(store, dim, str(self.embedder.model_id), self.config.index, timer=lambda: self.timer())

    @staticmethod
    def _no_pgvector(store: Any) -> str:
        from .db.vectors import missing_message

        url = str(getattr(store, "url", ""))
        if store is None or not url.startswith("postgresql"):
            return (
                "IndexConfig(backend='pgvector') needs L3 on PostgreSQL with the pgvector extension "
                f"(SQLConfig(url='postgresql+psycopg://...')); L3 here is {url.split(':')[0] or 'absent'}"
            )
        try:
            state = store.vector_extension_state()
        except BackendError as exc:
            return f"IndexConfig(backend='pgvector'), but L3 cannot be reached to use it: {exc}"
        return missing_message(url, state)

    def load_verifier(self) -> None:
        """Resolve ``Policy.verifier`` and the calibration its threshold comes from.

        Raises:
            ConfigurationError: an unusable choice, a calibration measured for another
                verifier, or a verifier with neither a calibration nor
                ``Policy.verifier_threshold``.
        """
        from .verify.calibration import Calibration
        from .verify.resolve import resolve_verifier

        policy = self.config.policy
        verifier = resolve_verifier(policy.verifier)
        if verifier is None:
            return
        share = getattr(verifier, "use_embedder", None)
        if callable(share) and self.embedder is not None:
            share(self.embedder)  # the default verifier reads the embedding pass's token states
        given = policy.verifier_calibration
        calibration: Calibration | None
        if given is None:
            calibration = getattr(verifier, "calibration", None)
        elif isinstance(given, Calibration):
            calibration = given
        else:
            calibration = Calibration.from_json(given)
        if calibration is not None and calibration.verifier_id != verifier.verifier_id:
            raise ConfigurationError(
                f"the calibration was measured for {calibration.verifier_id!r}, not for the verifier "
                f"{verifier.verifier_id!r}: run `semcache calibrate` with this verifier"
            )
        if calibration is None and policy.verifier_threshold is None:
            raise ConfigurationError(
                f"the verifier {verifier.verifier_id!r} has no calibration: measure one with "
                "`semcache calibrate` (Policy.verifier_calibration) or set Policy.verifier_threshold"
            )
        self.verifier, self.calibration = verifier, calibration
        self._verifier_thresholds = {}

    # -- thresholds ------------------------------------------------------------
    def cosine_threshold(self, request: Request, threshold: Any = UNSET) -> float | None:
        """The cosine similarity asked for: per call, else per scope/namespace, else
        ``Policy.similarity_threshold`` (``None``: none was set)."""
        if threshold is not UNSET and threshold is not None:
            return validate_threshold(threshold)
        per = self.config.policy.namespace_thresholds
        if request.scope in per:
            return float(per[request.scope])
        if request.namespace is not None and request.namespace in per:
            return float(per[request.namespace])
        return self.config.policy.similarity_threshold

    def threshold_for(self, request: Request, threshold: Any = UNSET) -> float:
        """The cosine similarity a candidate needs for a request: per call, else per
        scope/namespace, else per cache; with the verifier on, at least
        ``Policy.similarity_floor`` (the floor alone when none was set); with it off,
        :data:`~semcache.config.DEFAULT_SIMILARITY_THRESHOLD` when none was set."""
        asked = self.cosine_threshold(request, threshold)
        if self.verifier is None:
            return DEFAULT_SIMILARITY_THRESHOLD if asked is None else asked
        floor = float(self.config.policy.similarity_floor)
        # A verifier whose score is capped by the cosine (the default: head x prior) says
        # below which cosine no score can reach its threshold: those are not scored.
        bound = getattr(self.verifier, "min_similarity", None)
        vthr = self.verifier_threshold(request.namespace)
        if callable(bound) and vthr is not None:
            floor = max(floor, float(bound(vthr)))
        return floor if asked is None else max(floor, asked)

    def verifier_threshold(self, namespace: str | None) -> float | None:
        """The verifier score a candidate needs: ``Policy.verifier_threshold``, else the
        calibration's threshold for ``Policy.max_false_hit_rate`` (the namespace's own
        table where it has one); ``None`` with the verifier off."""
        if self.verifier is None:
            return None
        policy = self.config.policy
        if policy.verifier_threshold is not None:
            return float(policy.verifier_threshold)
        cal = self.calibration
        assert cal is not None  # load_verifier refuses a verifier with neither
        key = namespace if namespace is not None and namespace in cal.namespaces else None
        thr = self._verifier_thresholds.get(key)
        if thr is None:
            confident = policy.calibration_bound == "upper"
            thr = self._verifier_thresholds[key] = float(cal.threshold_for(policy.max_false_hit_rate, key, confident=confident))
        return thr

    # -- the verifier ---------------------------------------------------------------
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray | None:
        """The verifier's scores for (query, cached prompt) pairs, in one call; ``None``
        when it failed (counted, logged at most once a minute): the lookups it was asked
        about miss, never serving an unverified hit.

        Raises:
            VerifierError: it failed and ``Policy.on_backend_error="raise"``.
        """
        verifier = self.verifier
        assert verifier is not None
        t0 = time.perf_counter()
        try:
            return self.verify_raw(pairs)
        except Exception as exc:  # noqa: BLE001 - any failure is a miss, never an unverified hit
            self.stats.inc("verifier_errors")
            now = time.monotonic()
            if now - self._verifier_logged >= _VERIFIER_LOG_SECONDS:
                self._verifier_logged = now
                log.warning("verifier %s failed (%s: %s); its lookups miss", verifier.verifier_id, type(exc).__name__, exc)
            if self.config.policy.on_backend_error == "raise":
                if isinstance(exc, VerifierError):
                    raise
                raise VerifierError(f"the verifier {verifier.verifier_id} failed: {type(exc).__name__}: {exc}") from exc
            return None
        finally:
            self.stats.inc("verifier_calls")
            self.stats.inc("verifier_pairs", len(pairs))
            self.stats.inc("verifier_us", int((time.perf_counter() - t0) * 1e6))

    def verify_raw(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The verifier's checked scores for pairs (texts cut to
        :data:`~semcache.verify.base.MAX_PAIR_CHARS`); nothing counted, errors raised."""
        from .verify.base import MAX_PAIR_CHARS, check_scores

        verifier = self.verifier
        if verifier is None:
            raise ConfigurationError("this cache has no verifier")
        clipped = [(a[:MAX_PAIR_CHARS], b[:MAX_PAIR_CHARS]) for a, b in pairs]
        return check_scores(verifier.score(clipped), len(clipped), verifier.verifier_id)

    # -- embedding -----------------------------------------------------------------
    def embeddable(self, text: str) -> bool:
        """Whether ``text`` takes part in semantic matching (see ``Policy.long_prompt``).

        Raises:
            InvalidInputError: the text is too long and ``long_prompt="error"``.
        """
        if self.embedder is None:
            return False
        limit = getattr(self.embedder, "max_tokens", None)
        if limit is None:
            return True
        if self.embedder.count_tokens(text) <= limit:
            return True
        mode = self.config.policy.long_prompt
        if mode == "error":
            raise InvalidInputError(
                f"the prompt is longer than the embedder's window of {limit} tokens "
                "(set Policy.long_prompt='exact_only' or 'truncate' to cache it)"
            )
        if mode == "exact_only":
            self.stats.inc("long_prompts_exact_only")
            return False
        self.stats.inc("long_prompts_truncated")
        return True

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the cache's embedder, validated: ``(n, dim)`` unit rows.

        Raises:
            EmbeddingError: the embedder returned NaN, a wrong shape or dimension.
        """
        from .embedders.base import check_embeddings

        if self.embedder is None or self.index is None:
            raise ConfigurationError("this cache has no embedder (semantic matching is off)")
        t0 = time.perf_counter()
        out = self.embedder.embed(list(texts))
        tracing.embedded(time.perf_counter() - t0)
        checked: np.ndarray = check_embeddings(out, len(texts), self.index.dim)
        return checked

    def check_vector(self, v: np.ndarray) -> np.ndarray:
        """A precomputed vector, checked like the embedder's own."""
        from .embedders.base import check_embeddings

        if self.index is None:
            raise ConfigurationError("this cache has no embedder (semantic matching is off)")
        checked: np.ndarray = check_embeddings(v, 1, self.index.dim)[0]
        return checked

    def embed(self, request: Request) -> np.ndarray | None:
        """The request's vector (``None`` when it is not embeddable); recent ones are reused,
        since a miss is usually followed by a store of the same prompt."""
        with self._recent_lock:
            v: np.ndarray | None = self._recent.get(request.text)
        if v is not None:
            return v
        if not self.embeddable(request.text):
            return None
        t0 = time.perf_counter()
        v = self.embed_many([request.text])[0]
        self.stats.inc("embeddings")
        self.stats.inc("embed_us", int((time.perf_counter() - t0) * 1e6))
        with self._recent_lock:
            self._recent[request.text] = v
        return v

    # -- hits and savings --------------------------------------------------------------
    def hit(self, entry: Entry, tier: str, kind: str, sim: float, now: float, verifier_score: float | None = None) -> Hit | None:
        """The :class:`Hit` for an entry, or ``None`` (and removal) when its value is unreadable."""
        try:
            value = entry.value
        except SerializationError:
            self.stats.inc("corrupt_removed")
            self.on_corrupt([entry.key])
            return None
        self.stats.inc(f"hits_{tier}_{kind}")
        self.tenants.inc(entry.namespace, f"hits_{tier}_{kind}")
        self.count_saved(entry.metadata, entry.model, entry.namespace)
        return Hit(
            value=value,
            key=entry.key,
            tier=tier,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            similarity=sim,
            prompt=entry.prompt,
            age_seconds=max(0.0, now - entry.created_at),
            ttl_seconds_left=entry.ttl_left(now),
            entry=entry,
            verifier_score=verifier_score,
        )

    def miss(self, request: Request) -> None:
        """Count a lookup that found nothing."""
        self.stats.inc("misses")
        self.tenants.inc(request.namespace, "misses")

    def count_saved(self, metadata: Mapping[str, Any] | None, model: str | None, namespace: str | None = None) -> None:
        """Count the tokens and money a served answer saved (in ``namespace`` too)."""
        meta = metadata or {}
        usage = meta.get("usage")
        if isinstance(usage, Mapping):
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                v = usage.get(k)
                if isinstance(v, int) and v >= 0:
                    self.stats.inc(f"saved_{k}", v)
                    if k == "total_tokens":
                        self.tenants.inc(namespace, "saved_total_tokens", v)
        cost = meta.get("cost")
        if not isinstance(cost, (int, float)) and self.config.prices is not None:
            # priced at hit time, so a price table set later also covers older entries
            cost = self.config.prices.cost_usd(model or meta.get("response_model"), usage)
        if isinstance(cost, (int, float)) and cost > 0:
            self.stats.inc("saved_cost_microusd", round(cost * 1e6))
            self.tenants.inc(namespace, "saved_cost_microusd", round(cost * 1e6))
