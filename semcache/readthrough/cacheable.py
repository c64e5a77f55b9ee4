"""Whether an answer may be stored: one rule for the decorator and the proxy.

A rule that fails on an odd value means "do not store it": the caller still gets
the value, never the rule's exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..openai_compat import uncacheable_reason

__all__ = ["cacheable", "finished"]

log = logging.getLogger("semcache")


def cacheable(
    value: Any, *, stream: bool, rule: Callable[[Any], bool] | None = None, name: str = "semcache"
) -> bool:
    """Whether ``value`` (the list of items when ``stream``) may be stored.

    ``rule`` (the decorator's ``should_cache``) replaces the default: not ``None``,
    blank text, an ``error`` payload, ``finish_reason="content_filter"``, a completion
    without content (:func:`semcache.openai_compat.uncacheable_reason`).
    """
    try:
        if rule is not None:
            return bool(rule(value))
        reason = uncacheable_reason(value, stream=stream)
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: the response is not cached: checking it failed (%r)", name, exc)
        return False
    if reason is not None:
        log.debug("%s: response not cached (%s)", name, reason)
    return reason is None


def finished(completion: Mapping[str, Any]) -> bool:
    """Whether every choice of a chat completion says why it stopped (one that does not may be cut short)."""
    choices = completion.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, Mapping) and c.get("finish_reason") for c in choices)
    )
