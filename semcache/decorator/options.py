"""Per-call controls: ``with cache.options(...)`` / ``with semcache.decorator.options(...)``.

Held in a ``contextvars`` variable, so they follow threads started with a copied
context and asyncio tasks. Pure: no I/O, no cache import.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from ..config import UNSET
from ..errors import InvalidInputError
from ..readthrough import AsyncCache, SyncCache

__all__ = ["CallOptions", "current_options", "options", "options_owner"]


@dataclass(frozen=True, kw_only=True)
class CallOptions:
    """Per-call controls (see :func:`options`); ``UNSET`` means the decorator's setting."""

    bypass: bool = False
    lookup: bool = True
    store: bool = True
    semantic: Any = UNSET
    ttl_seconds: Any = UNSET
    threshold: Any = UNSET
    tags: tuple[str, ...] = ()
    namespace: Any = UNSET


_OPTION_NAMES = frozenset(f.name for f in fields(CallOptions))
# the open ``with`` blocks, outermost first: (id(owner) or None for every cache, the
# controls the block names). Replaced, never mutated. Only named controls are kept,
# so an inner block overrides exactly what it names, even back to a default value.
_OPTIONS: contextvars.ContextVar[tuple[tuple[int | None, Mapping[str, Any]], ...]] = contextvars.ContextVar(
    "semcache_options", default=()
)


def _merge(base: CallOptions, given: Mapping[str, Any]) -> CallOptions:
    changes = dict(given)
    if "tags" in changes:
        tags = changes["tags"]
        if isinstance(tags, str):
            raise InvalidInputError("tags must be a list of strings, not a string")
        changes["tags"] = tuple(dict.fromkeys((*base.tags, *tags)))
    return replace(base, **changes)


@contextlib.contextmanager
def options(_owner: Any = None, **given: Any) -> Iterator[CallOptions]:
    """Set per-call controls for cached calls made inside the ``with`` block.

    Keyword args: ``bypass``, ``lookup``, ``store``, ``semantic``, ``ttl_seconds``,
    ``threshold``, ``tags`` (added to the decorator's), ``namespace``. Blocks nest;
    an inner block overrides exactly what it names, whether it is this module-level
    function (every cache's functions) or ``cache.options(...)`` (that cache's only).

    Raises:
        InvalidInputError: an unknown control name, or ``tags`` given as a string.
    """
    unknown = set(given) - _OPTION_NAMES
    if unknown:
        raise InvalidInputError(f"unknown cache option(s) {sorted(unknown)}; known: {sorted(_OPTION_NAMES)}")
    _merge(CallOptions(), given)  # reject bad values when the block opens, not at the first call
    owner = None if _owner is None else id(_owner)
    token = _OPTIONS.set((*_OPTIONS.get(), (owner, MappingProxyType(dict(given)))))
    try:
        yield current_options(_owner)
    finally:
        _OPTIONS.reset(token)


def current_options(owner: Any = None) -> CallOptions:
    """The controls in force for ``owner``'s cached calls (every cache's when ``None``).

    The open blocks apply outermost first: module-wide ones and ``owner``'s own, in
    the order they were opened.
    """
    return options_for(None if owner is None else id(owner))


def options_for(owner_id: int | None) -> CallOptions:
    """:func:`current_options` by the owner's id (see :func:`options_owner`)."""
    opts = CallOptions()
    for who, given in _OPTIONS.get():
        if who is None or who == owner_id:
            opts = _merge(opts, given)
    return opts


def options_owner(cache: SyncCache | AsyncCache) -> int:
    """The id that ``cache.options(...)`` files its blocks under.

    Asked of the cache itself (an empty block opened and read back), since a facade
    may file them under the cache it drives: the decorator then needs no reach-in.
    """
    before = len(_OPTIONS.get())
    with cache.options():
        blocks = _OPTIONS.get()
        if len(blocks) == before + 1 and blocks[-1][0] is not None:
            return blocks[-1][0]
    return id(cache)
