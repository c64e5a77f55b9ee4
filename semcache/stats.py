"""Typed counters and the stats report."""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Core

__all__ = ["Counters", "audit_report", "collect", "feedback_report", "report", "wilson_upper"]


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
    if core.index is not None:
        out["index"] = core.index.stats()
        out["embedder"] = core.embedder.model_id
        out["verifier"]["id"] = None if core.verifier is None else core.verifier.verifier_id
    return out
