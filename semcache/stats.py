"""Typed counters and the stats report."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Core

__all__ = ["Counters", "collect", "report"]


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
        "saved_tokens": c.get("saved_total_tokens", 0),
        "saved_cost_usd": c.get("saved_cost_microusd", 0) / 1e6,
        # a hit, or a call that waited for an identical one, is an LLM call not made
        "saved_calls": sum(hits.values()) + c.get("coalesced_calls", 0),
        "coalesced_calls": c.get("coalesced_calls", 0),
        "replica_log_applied": c.get("replica_log_applied", 0),
        "l3_handed_off": c.get("l3_handed_off", 0),
        "l3_handoff_drained": c.get("l3_handoff_drained", 0),
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
    return out
