"""Read-only inspection shared by the sidecar and the CLI: list, count and describe entries.

The cache's read path answers one prompt; inspection walks many entries. It reads the
lowest tier that can list (L3, else L2), because L1 holds only a hot subset.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from .errors import InvalidInputError
from .tiers.base import Listable, Scannable
from .types import Entry, Selector

__all__ = ["count_matching", "entry_view", "list_entries", "listing_tier", "value_fields"]

#: Most entries a dry run counts by scanning L2 (L3 counts in SQL, without a cap).
_SCAN_CAP = 1_000_000
#: Rows read per round trip when a prompt pattern is filtered here rather than in SQL.
_PATTERN_PAGE = 500


def listing_tier(cache: Any) -> Any:
    """The tier backend used for listing (L3 if present, else L2), or ``None``.

    ``cache`` is a :class:`~semcache.cache.SemanticCache` or its async facade (both
    expose ``tiers``).
    """
    tiers = cache.tiers
    for t in tiers:
        if isinstance(t, Listable):
            return t
    for t in tiers:
        if isinstance(t, Scannable):
            return t
    return None


def list_entries(
    cache: Any, selector: Selector | None, now: float, *, limit: int = 50, offset: int = 0
) -> list[Entry]:
    """Live entries matching ``selector`` (``None``: all), newest first, one page.

    Raises:
        InvalidInputError: no tier can list (L1 only).
    """
    tier = listing_tier(cache)
    if tier is None:
        raise InvalidInputError(
            "listing entries needs L2 (Redis) or L3 (SQL); this cache has neither"
        )
    if isinstance(tier, Listable):
        if selector is None or selector.prompt_pattern is None or selector.all:
            return list(tier.list_entries(selector, now, limit=limit, offset=offset))
        return _list_by_pattern(tier, selector, now, limit=limit, offset=offset)
    found = [
        e
        for e in tier.iter_entries()
        if not e.expired(now)
        and (selector is None or selector.all or selector.is_empty() or selector.matches(e, now))
    ]
    found.sort(key=lambda e: (-e.created_at, e.key))
    return found[offset : offset + limit]


def _list_by_pattern(
    tier: Any, selector: Selector, now: float, *, limit: int, offset: int
) -> list[Entry]:
    """One page of the entries matching a selector with a prompt pattern.

    The database cannot match a glob, so the tier filters the pattern after it pages:
    ``limit``/``offset`` would count rows before the filter, and a page could come back
    short or empty with matches further on. Here the tier pages without the pattern,
    and rows are read until ``offset + limit`` matches are found or the rows run out.
    """
    if limit <= 0:
        return []
    rest = dataclasses.replace(selector, prompt_pattern=None)
    base = None if rest.is_empty() else rest
    page = max(limit + offset, _PATTERN_PAGE)
    found: list[Entry] = []
    raw_offset = 0
    while len(found) < offset + limit:
        rows = list(tier.list_entries(base, now, limit=page, offset=raw_offset))
        found.extend(e for e in rows if selector.matches(e, now))
        if len(rows) < page:
            break  # the store is exhausted
        raw_offset += page
    return found[offset : offset + limit]


def count_matching(cache: Any, selector: Selector, now: float) -> int:
    """How many entries an invalidation with ``selector`` would remove (nothing is removed).

    Raises:
        InvalidInputError: no tier can count (L1 only).
    """
    if selector.is_empty():
        return 0
    tier = listing_tier(cache)
    if tier is None:
        raise InvalidInputError(
            "a dry run needs L2 (Redis) or L3 (SQL) to count from; this cache has neither"
        )
    if isinstance(tier, Listable):
        if selector.all:
            return int(tier.count())
        return len(tier.select_keys(selector, now))
    n = 0
    for e in tier.iter_entries():
        if selector.all or selector.matches(e, now):
            n += 1
            if n >= _SCAN_CAP:
                break
    return n


def value_fields(value: Any) -> dict[str, Any]:
    """``{"value": v}``, or ``{"value": None, "value_base64": …}`` for bytes (JSON has none)."""
    if isinstance(value, (bytes, bytearray)):
        return {"value": None, "value_base64": base64.b64encode(bytes(value)).decode("ascii")}
    return {"value": value}


def entry_view(entry: Entry, now: float, *, include_value: bool = False) -> dict[str, Any]:
    """A JSON-friendly description of an entry."""
    out: dict[str, Any] = {
        "entry_id": entry.key,
        "prompt": entry.prompt,
        "scope": entry.scope,
        "namespace": entry.namespace,
        "model": entry.model,
        "tags": list(entry.tags),
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "age_seconds": round(max(0.0, now - entry.created_at), 3),
        "ttl_seconds_left": None
        if entry.expires_at is None
        else round(max(0.0, entry.expires_at - now), 3),
        "metadata": dict(entry.metadata),
        "embedder": entry.embedder_id,
    }
    if include_value:
        out.update(value_fields(entry.value))
    return out
