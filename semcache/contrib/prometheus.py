"""Prometheus metrics for a cache and the sidecar, each set in its own registry.

A registry per :class:`CacheMetrics` (never the process-wide default) lets several apps
live in one process, as tests do, without "Duplicated timeseries" errors.

Counters kept by the cache itself (hits by tier and kind, misses, tier errors, tokens
and money saved) are read from ``cache.stats()`` at scrape time by a collector, so
they cover every way into the cache, not only HTTP. Latencies and batch sizes are
observed by the sidecar as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..errors import MissingDependencyError

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("prometheus-client", "server") from exc

__all__ = ["CONTENT_TYPE_LATEST", "CacheMetrics", "CacheStatsCollector", "PrometheusMiddleware"]

#: Lookup latencies span 20 µs (an L1 exact hit) to seconds (a cold model, a slow tier).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)


class CacheStatsCollector(Collector):
    """Exposes a cache's own counters (``stats()``) as Prometheus metrics at scrape time.

    ``cache`` is a cache, or a function returning the current one. ``tenant_limit``
    bounds the ``tenant`` label of the per-tenant families: the first that many
    namespaces the cache tracked (in the order first seen, so the set is stable and each
    series monotonic) get their own value, and every other namespace is summed under
    ``tenant="_other"``; the default namespace is ``tenant="_default"``.
    """

    def __init__(self, cache: Any, *, tenant_limit: int = 50) -> None:
        self.cache = cache
        self.tenant_limit = tenant_limit

    def _current(self) -> Any:
        c = self.cache
        return c() if callable(c) and not hasattr(c, "stats") else c

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by the registry on every scrape)."""
        try:
            cache = self._current()
            s = cache.stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because a tier's stats did
            return
        yield from self._tenants(cache)
        hits = CounterMetricFamily(
            "semcache_hits", "Cache hits by tier and kind.", labels=["tier", "kind"]
        )
        for name, n in sorted(s.get("hits_by", {}).items()):
            tier, _, kind = name.partition("_")
            hits.add_metric([tier, kind], n)
        yield hits
        yield CounterMetricFamily(
            "semcache_misses", "Lookups that found nothing.", value=s.get("misses", 0)
        )
        yield CounterMetricFamily("semcache_sets", "Entries stored.", value=s.get("sets", 0))
        yield CounterMetricFamily(
            "semcache_invalidated",
            "Entries removed by invalidation.",
            value=s.get("invalidated", 0),
        )
        yield CounterMetricFamily(
            "semcache_semantic_lookups",
            "Lookups that searched the index.",
            value=s.get("semantic_lookups", 0),
        )
        errors = CounterMetricFamily(
            "semcache_tier_errors", "Tier failures (counted, served as misses).", labels=["tier"]
        )
        for tier, n in sorted(s.get("tier_errors", {}).items()):
            errors.add_metric([tier], n)
        yield errors
        guards = CounterMetricFamily(
            "semcache_guard_rejections",
            "Semantic candidates rejected by a guard.",
            labels=["guard"],
        )
        for guard, n in sorted(s.get("guard_rejections", {}).items()):
            guards.add_metric([guard], n)
        yield guards
        verifier = s.get("verifier") or {}
        for name, what in (
            ("calls", "Pair-verifier calls (each scores the candidates of a lookup or a batch)."),
            ("pairs", "Candidate pairs the verifier scored."),
            ("rejections", "Semantic candidates rejected by the verifier."),
            ("errors", "Verifier failures (their lookups missed)."),
        ):
            yield CounterMetricFamily(f"semcache_verifier_{name}", what, value=verifier.get(name, 0))
        yield CounterMetricFamily(
            "semcache_verifier_seconds", "Time spent in the verifier.", value=verifier.get("seconds", 0.0)
        )
        yield CounterMetricFamily(
            "semcache_saved_tokens",
            "LLM tokens not spent thanks to hits.",
            value=s.get("saved_tokens", 0),
        )
        yield CounterMetricFamily(
            "semcache_saved_cost_dollars",
            "Money not spent thanks to hits (USD).",
            value=s.get("saved_cost_usd", 0.0),
        )
        fb = s.get("feedback")
        if isinstance(fb, dict):
            reports = CounterMetricFamily(
                "semcache_feedback", "Feedback reports on hits, by verdict.", labels=["verdict"]
            )
            for verdict in ("wrong", "correct"):
                reports.add_metric([verdict], fb.get(verdict, 0))
            yield reports
            yield GaugeMetricFamily(
                "semcache_feedback_blocked_pairs",
                "(request, entry) pairings reported wrong that this replica never serves.",
                value=fb.get("blocked_pairs", 0),
            )
            rate = fb.get("estimated_false_hit_rate")
            if isinstance(rate, (int, float)):
                yield GaugeMetricFamily(
                    "semcache_feedback_false_hit_rate",
                    "Wrong reports among the semantic hits that received feedback (since start).",
                    value=rate,
                )
        audits = s.get("audits")
        if isinstance(audits, dict):
            for name, what in (
                ("started", "Semantic hits asked of the LLM again in the background (audits)."),
                ("agreed", "Audits whose fresh answer agreed with the cached one (a correct label)."),
                ("disagreed", "Audits whose fresh answer disagreed with the cached one (a wrong label)."),
                ("unjudged", "Audits with no verifier to compare the answers (no label)."),
                ("failed", "Audits that failed: the LLM call, its answer, the verifier or the label store."),
                ("dropped", "Sampled hits not audited: too many audits running, or the cache closing."),
            ):
                yield CounterMetricFamily(f"semcache_audits_{name}", what, value=audits.get(name, 0))
            rate = audits.get("disagreement_rate")
            if isinstance(rate, (int, float)):
                yield GaugeMetricFamily(
                    "semcache_audit_disagreement_rate",
                    "Disagreeing audits among those judged (since start): errs high as a false-hit rate.",
                    value=rate,
                )
        index = s.get("index")
        if isinstance(index, dict) and "entries" in index:
            yield GaugeMetricFamily(
                "semcache_index_vectors", "Vectors in the in-process index.", value=index["entries"]
            )
        yield GaugeMetricFamily(
            "semcache_l1_bytes", "Bytes held by L1.", value=s.get("l1_bytes", 0)
        )


    def _tenants(self, cache: Any) -> Iterator[Any]:
        rows_of = getattr(cache, "namespace_rows", None)
        if rows_of is None:
            return
        rows, other = rows_of(self.tenant_limit)
        if any(other[k] for k in ("lookups", "sets", "invalidated")):
            rows.append(other)
        hits = CounterMetricFamily("semcache_tenant_hits", "Hits by tenant (namespace) and kind.", labels=["tenant", "kind"])
        misses = CounterMetricFamily("semcache_tenant_misses", "Lookups that found nothing, by tenant.", labels=["tenant"])
        sets = CounterMetricFamily("semcache_tenant_sets", "Entries stored, by tenant.", labels=["tenant"])
        tokens = CounterMetricFamily("semcache_tenant_saved_tokens", "LLM tokens not spent thanks to hits, by tenant.", labels=["tenant"])
        cost = CounterMetricFamily("semcache_tenant_saved_cost_dollars", "Money not spent thanks to hits (USD), by tenant.", labels=["tenant"])
        for row in rows:
            tenant = "_default" if row["namespace"] is None else str(row["namespace"])
            for kind in ("exact", "semantic"):
                hits.add_metric([tenant, kind], row[f"hits_{kind}"])
            misses.add_metric([tenant], row["misses"])
            sets.add_metric([tenant], row["sets"])
            tokens.add_metric([tenant], row["saved_tokens"])
            cost.add_metric([tenant], row["saved_cost_usd"])
        yield from (hits, misses, sets, tokens, cost)


class CacheMetrics:
    """The sidecar's metrics, in a private registry.

    Args:
        cache: a :class:`~semcache.cache.SemanticCache` or its async facade (or a
            function returning the current one) whose ``stats()`` feed the hit, miss,
            error and savings counters (optional).
        registry: where to register (default: a new :class:`CollectorRegistry`).
        tenant_limit: how many tenants get their own ``tenant`` label value in the
            per-tenant families (the rest share ``_other``; :class:`CacheStatsCollector`).
    """

    def __init__(self, cache: Any = None, *, registry: CollectorRegistry | None = None, tenant_limit: int = 50) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.lookup_seconds = Histogram(
            "semcache_lookup_seconds",
            "Lookup latency inside the sidecar, by route and result.",
            ["route", "result"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embedding_batch_size = Histogram(
            "semcache_embedding_batch_size",
            "Texts embedded per micro-batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "semcache_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "semcache_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "semcache_upstream_requests",
            "Calls forwarded to the upstream LLM API, by status (0: unreachable).",
            ["status"],
            registry=self.registry,
        )
        if cache is not None:
            self.registry.register(CacheStatsCollector(cache, tenant_limit=tenant_limit))

    def observe_lookup(self, route: str, result: str, seconds: float) -> None:
        """Record one lookup's latency (``result``: ``exact``, ``semantic`` or ``miss``)."""
        self.lookup_seconds.labels(route, result).observe(seconds)

    def observe_batch(self, size: int) -> None:
        """Record the size of one embedding micro-batch."""
        self.embedding_batch_size.observe(size)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))


#: HTTP methods counted under their own name in ``http_requests``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class PrometheusMiddleware:
    """ASGI middleware counting requests by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: Any, metrics: CacheMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        t0 = time.perf_counter()

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            # any token is a valid method to the server: unknown ones share one label value
            if method not in _METHODS:
                method = "other"
            self.metrics.http_requests.labels(template, method, str(status[0])).inc()
            self.metrics.http_seconds.labels(template).observe(time.perf_counter() - t0)
