"""Typed counters and the stats report."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Core

__all__ = [
    "MAX_TRACKED_NAMESPACES",
    "OTHER_NAMESPACES",
    "Counters",
    "NamespaceCounters",
    "audit_report",
    "collect",
    "feedback_report",
    "namespace_report",
    "namespace_rows",
    "report",
    "wilson_upper",
]

#: Namespaces counted one by one; lookups and writes of further ones are counted together.
MAX_TRACKED_NAMESPACES = 10_000
#: The row that counts every namespace past the limit.
OTHER_NAMESPACES = "_other"


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self._c[name] += n

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._c)


class NamespaceCounters:
    """Thread-safe counters per namespace (a sidecar's tenant), bounded in memory.

    The first ``limit`` namespaces seen are counted one by one, for the life of the
    process; every later one is counted in the shared :data:`OTHER_NAMESPACES` row (and
    reported as not tracked). Membership only grows and the order is the order first
    seen, so the first *k* namespaces are the same at every scrape, and a per-namespace
    metric over them is monotonic: that is what bounds a metric's label values.
    """

    def __init__(self, limit: int = MAX_TRACKED_NAMESPACES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._rows: dict[str | None, Counter[str]] = {}
        self._other: Counter[str] = Counter()

    def _row(self, namespace: str | None) -> Counter[str]:
        row = self._rows.get(namespace)
        if row is None:
            if len(self._rows) >= self.limit:
                return self._other
            row = self._rows[namespace] = Counter()
        return row

    def register(self, namespaces: Iterable[str | None]) -> None:
        """Track these namespaces first (a sidecar's configured tenants), in this order."""
        with self._lock:
            for ns in namespaces:
                self._row(ns)

    def inc(self, namespace: str | None, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` of ``namespace``."""
        with self._lock:
            self._row(namespace)[name] += n

    def get(self, namespace: str | None) -> tuple[bool, dict[str, int]]:
        """Whether ``namespace`` is tracked, and a copy of its counters (empty if not)."""
        with self._lock:
            row = self._rows.get(namespace)
            return row is not None, dict(row or {})

    def snapshot(self) -> tuple[list[tuple[str | None, dict[str, int]]], dict[str, int]]:
        """Every tracked namespace's counters in the order first seen, and the rest's."""
        with self._lock:
            return [(ns, dict(c)) for ns, c in self._rows.items()], dict(self._other)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


def namespace_report(namespace: str | None, tracked: bool, c: dict[str, int]) -> dict[str, Any]:
    """The stats of one namespace since open: ``lookups``, ``hits`` (``hits_by`` tier and
    kind, as in :func:`report`, and ``hits_exact`` / ``hits_semantic``), ``misses``,
    ``hit_rate``, ``sets``, ``invalidated`` (by selectors naming the namespace),
    ``saved_tokens`` and ``saved_cost_usd``. ``tracked`` is false for a namespace past
    :data:`MAX_TRACKED_NAMESPACES` (all zeros)."""
    hits_by = {k[5:]: v for k, v in sorted(c.items()) if k.startswith("hits_")}
    hits = sum(hits_by.values())
    misses = c.get("misses", 0)
    lookups = hits + misses
    return {
        "namespace": namespace,
        "tracked": tracked,
        "lookups": lookups,
        "hits": hits,
        "hits_by": hits_by,
        "hits_exact": sum(v for k, v in hits_by.items() if k.endswith("_exact")),
        "hits_semantic": sum(v for k, v in hits_by.items() if k.endswith("_semantic")),
        "misses": misses,
        "hit_rate": hits / lookups if lookups else None,
        "sets": c.get("sets", 0),
        "invalidated": c.get("invalidated", 0),
        "saved_tokens": c.get("saved_total_tokens", 0),
        "saved_cost_usd": c.get("saved_cost_microusd", 0) / 1e6,
    }


def namespace_rows(counters: NamespaceCounters, limit: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reports of the first ``limit`` namespaces tracked (in the order first seen),
    and one report summing every other namespace (``namespace`` :data:`OTHER_NAMESPACES`)."""
    rows, other = counters.snapshot()
    rest: Counter[str] = Counter(other)
    for _, c in rows[limit:]:
        rest.update(c)
    kept = [namespace_report(ns, True, c) for ns, c in rows[:limit]]
    return kept, namespace_report(OTHER_NAMESPACES, False, dict(rest))


def wilson_upper(k: int, n: int, z: float = 1.959964) -> float | None:
    """The upper end of the 95% Wilson score interval of a rate ``k / n`` (``None`` for ``n = 0``)."""
    if n <= 0:
        return None
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / (1 + z * z / n))


def feedback_report(c: dict[str, int]) -> dict[str, Any]:
    """Feedback received since open: ``wrong`` and ``correct`` reports (exact and semantic),
    ``semantic_hits_reported`` (semantic hits that received a report) and, among them,
    ``estimated_false_hit_rate`` = wrong semantic reports / semantic hits reported, with
    ``false_hit_rate_upper_95`` (the upper end of its 95% Wilson interval).

    The rate describes the hits that were *reported*: if users report mostly the
    wrong ones, it overstates the rate over all semantic hits; judging a random sample
    of hits (``source="llm"``) gives an unbiased one.
    """
    sw, sc = c.get("feedback_semantic_wrong", 0), c.get("feedback_semantic_correct", 0)
    n = sw + sc
    return {
        "wrong": c.get("feedback_wrong", 0),
        "correct": c.get("feedback_correct", 0),
        "semantic_hits_reported": n,
        "semantic_wrong": sw,
        "estimated_false_hit_rate": sw / n if n else None,
        "false_hit_rate_upper_95": wilson_upper(sw, n),
        "blocked_candidates": c.get("feedback_blocked_candidates", 0),
        "labels_held_in_process": c.get("feedback_labels_held", 0),
    }


def audit_report(c: dict[str, int]) -> dict[str, Any]:
    """The audits since open: ``started``, ``agreed``, ``disagreed``, ``unjudged`` (no
    verifier), ``failed``, ``dropped`` (not started: too many running, or the cache
    closed first), and ``disagreement_rate`` = disagreed / (agreed + disagreed) with
    ``disagreement_rate_upper_95`` (the upper end of its 95% Wilson interval).

    The sampled hits are a random sample of the semantic hits, so the rate is an
    unbiased estimate of how often a fresh answer disagrees with the cached one;
    as an estimate of the false-hit rate it errs high (good answers worded apart).
    """
    agreed, disagreed = c.get("audits_agreed", 0), c.get("audits_disagreed", 0)
    judged = agreed + disagreed
    return {
        "started": c.get("audits_started", 0),
        "agreed": agreed,
        "disagreed": disagreed,
        "unjudged": c.get("audits_unjudged", 0),
        "failed": c.get("audits_failed", 0),
        "dropped": c.get("audits_dropped", 0),
        "disagreement_rate": disagreed / judged if judged else None,
        "disagreement_rate_upper_95": wilson_upper(disagreed, judged),
    }


def report(c: dict[str, int], tiers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The stats document from counters and per-tier stats."""
    hits = {k[5:]: v for k, v in c.items() if k.startswith("hits_")}
    out: dict[str, Any] = {
        "hits": sum(hits.values()),
        "hits_by": hits,
        "misses": c.get("misses", 0),
        "sets": c.get("sets", 0),
        "not_durable": c.get("not_durable", 0),
        "semantic_lookups": c.get("semantic_lookups", 0),
        "embeddings": c.get("embeddings", 0),
        "invalidated": c.get("invalidated", 0),
        "corrupt_removed": c.get("corrupt_removed", 0),
        "guard_rejections": {k[17:]: v for k, v in c.items() if k.startswith("guard_rejections_")},
        "long_prompts_exact_only": c.get("long_prompts_exact_only", 0),
        # the pair verifier: calls (each scores the candidates of a lookup or a batch),
        # pairs scored, candidates it rejected, failures (those lookups missed), time
        "verifier": {
            "calls": c.get("verifier_calls", 0),
            "pairs": c.get("verifier_pairs", 0),
            "rejections": c.get("verifier_rejections", 0),
            "errors": c.get("verifier_errors", 0),
            "seconds": c.get("verifier_us", 0) / 1e6,
        },
        "saved_tokens": c.get("saved_total_tokens", 0),
        "saved_cost_usd": c.get("saved_cost_microusd", 0) / 1e6,
        # a hit, or a call that waited for an identical one, is an LLM call not made
        "saved_calls": sum(hits.values()) + c.get("coalesced_calls", 0),
        "coalesced_calls": c.get("coalesced_calls", 0),
        "replica_log_applied": c.get("replica_log_applied", 0),
        "l3_handed_off": c.get("l3_handed_off", 0),
        "l3_handoff_drained": c.get("l3_handoff_drained", 0),
        "feedback": feedback_report(c),
        # semantic hits asked of the LLM again (Policy.audit_rate; semcache.audit)
        "audits": audit_report(c),
        "tiers": tiers,
    }
    for tier in ("l1", "l2", "l3"):
        out[f"hits_{tier}"] = sum(v for k, v in hits.items() if k.startswith(tier))
    l1 = tiers.get("l1", {})
    out["evictions"] = l1.get("evictions", 0)
    out["l1_bytes"] = l1.get("bytes", 0)
    out["tier_errors"] = {name: t.get("errors", 0) for name, t in tiers.items()}
    return out


def collect(core: Core) -> dict[str, Any]:
    """The stats document of a cache: its counters, each tier's stats, the index."""
    chain = core.chain
    tiers: dict[str, dict[str, Any]] = {}
    for slot in chain.slots:
        try:
            ts = dict(slot.backend.stats())
        except Exception:  # noqa: BLE001 - a third-party tier's stats must not break ours
            ts = {}
        ts.update(errors=slot.errors, skipped=slot.skipped, down=chain.down(slot), failed=slot.failed is not None, behind=slot.behind)
        tiers[slot.name] = ts
    out = report(core.stats.snapshot(), tiers)
    out["namespaces_tracked"] = len(core.tenants)
    if core.index is not None:
        out["index"] = core.index.stats()
        out["embedder"] = core.embedder.model_id
        out["verifier"]["id"] = None if core.verifier is None else core.verifier.verifier_id
    return out
