"""Value types shared by every part: entries, hits and invalidation selectors."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = ["Candidate", "Entry", "Hit", "LookupOutcome", "Selector"]

Tier = Literal["l1", "l2", "l3"]
Kind = Literal["exact", "semantic"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached response, as every tier stores it.

    ``key`` is the exact key and the entry's id. ``payload`` is the serialised
    response (see :mod:`semcache.serde`); ``value`` decodes it. ``expires_at`` is an
    absolute Unix time, or ``None`` for an entry that never expires.
    """

    key: str
    scope: str
    prompt: str
    payload: bytes
    created_at: float
    expires_at: float | None = None
    namespace: str | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: bytes | None = field(default=None, repr=False)
    embedder_id: str | None = None
    #: The TTL the entry was stored with (used by sliding expiry).
    ttl_seconds: float | None = None
    #: The write's version (see :mod:`semcache.versions`): every tier keeps the highest
    #: version it was given for a key, and a delete is a tombstone with a version, so an
    #: older write or a stale promotion never replaces a newer write or a delete.
    version: int = 0
    #: Set on the entry :meth:`~semcache.SemanticCache.set` returns: whether a durable
    #: tier (L3, or L2's durable hand-off log while L3 is down) took the write. ``None``
    #: on entries read back from a tier.
    durable: bool | None = field(default=None, compare=False)

    @property
    def value(self) -> Any:
        """The response, decoded from ``payload``."""
        from .serde import loads

        return loads(self.payload)

    def expired(self, now: float) -> bool:
        """Whether the entry is past its ``expires_at`` at time ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def ttl_left(self, now: float) -> float | None:
        """Seconds left to live at ``now`` (``None`` when it never expires)."""
        return None if self.expires_at is None else max(0.0, self.expires_at - now)

    def with_expiry(self, expires_at: float | None) -> Entry:
        """Return a copy with another ``expires_at``."""
        return replace(self, expires_at=expires_at)

    def size(self) -> int:
        """Approximate bytes this entry takes in memory (for L1 byte bounds)."""
        return (
            len(self.payload)
            + len(self.prompt) * 2
            + (len(self.embedding) if self.embedding else 0)
            + 200
        )


@dataclass(frozen=True, slots=True)
class Hit:
    """How a lookup was answered."""

    value: Any
    key: str
    tier: Tier
    kind: Kind
    similarity: float
    prompt: str
    age_seconds: float
    ttl_seconds_left: float | None
    entry: Entry = field(repr=False)
    #: The pair verifier's score for a semantic hit (``None``: exact, or no verifier).
    verifier_score: float | None = None

    @property
    def entry_id(self) -> str:
        """The id of the entry that answered (the same as ``key``)."""
        return self.key

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly description of the hit (without the value)."""
        return {
            "entry_id": self.key,
            "tier": self.tier,
            "kind": self.kind,
            "similarity": round(self.similarity, 6),
            "matched_prompt": self.prompt,
            "age_seconds": round(self.age_seconds, 3),
            "ttl_seconds_left": None if self.ttl_seconds_left is None else round(self.ttl_seconds_left, 3),
            "tags": list(self.entry.tags),
            "verifier_score": None if self.verifier_score is None else round(self.verifier_score, 6),
        }


@dataclass(frozen=True, slots=True)
class LookupOutcome:
    """One answer of a batch lookup: the hit (or ``None``), the query's embedding
    when one was computed (a store after the miss reuses it), or this request's error."""

    hit: Hit | None = None
    embedding: Any = field(default=None, repr=False)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A semantic candidate considered by a lookup, with the checks it went through."""

    key: str
    similarity: float
    prompt: str | None = None
    passed_threshold: bool = False
    guards: tuple[tuple[str, bool, str], ...] = ()
    decision: str = ""
    #: The verifier's score (``None``: not scored, e.g. below the floor or no verifier).
    verifier_score: float | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """What to invalidate. Fields combine with AND; an empty selector matches nothing.

    Use :meth:`everything` for a deliberate flush.
    """

    keys: tuple[str, ...] = ()
    scope: str | None = None
    namespace: str | None = None
    model: str | None = None
    tag: str | None = None
    older_than_seconds: float | None = None
    prompt_pattern: str | None = None
    all: bool = False

    @classmethod
    def of(
        cls,
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        scope: str | None = None,
        namespace: str | None = None,
        model: str | None = None,
        tag: str | None = None,
        older_than_seconds: float | None = None,
        prompt_pattern: str | None = None,
    ) -> Selector:
        """A selector from invalidation criteria (combined with AND).

        Raises:
            InvalidInputError: no criterion, or a bad ``older_than_seconds``.
        """
        from .errors import InvalidInputError

        if older_than_seconds is not None and (
            isinstance(older_than_seconds, bool)
            or not isinstance(older_than_seconds, (int, float))
            or math.isnan(older_than_seconds)
            or older_than_seconds < 0
        ):
            raise InvalidInputError("older_than_seconds must be a non-negative number")
        sel = cls(
            keys=tuple(keys) + ((key,) if key is not None else ()),
            scope=scope,
            namespace=namespace,
            model=model,
            tag=tag,
            older_than_seconds=older_than_seconds,
            prompt_pattern=prompt_pattern,
        )
        if sel.is_empty():
            raise InvalidInputError("name at least one criterion to invalidate (or call flush())")
        return sel

    @classmethod
    def everything(cls) -> Selector:
        """A selector that matches every entry."""
        return cls(all=True)

    def is_empty(self) -> bool:
        """True when the selector names nothing (and so matches nothing)."""
        return not self.all and not (
            self.keys
            or self.scope is not None
            or self.namespace is not None
            or self.model is not None
            or self.tag is not None
            or self.older_than_seconds is not None
            or self.prompt_pattern is not None
        )

    def matches(self, entry: Entry, now: float) -> bool:
        """Whether ``entry`` is selected at time ``now``."""
        if self.is_empty():
            return False
        if self.keys and entry.key not in self.keys:
            return False
        if self.scope is not None and entry.scope != self.scope:
            return False
        if self.namespace is not None and entry.namespace != self.namespace:
            return False
        if self.model is not None and entry.model != self.model:
            return False
        if self.tag is not None and self.tag not in entry.tags:
            return False
        if self.older_than_seconds is not None and not (
            entry.created_at <= now - self.older_than_seconds
        ):
            return False
        return self.prompt_pattern is None or fnmatch.fnmatchcase(entry.prompt, self.prompt_pattern)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (for the invalidation stream between replicas)."""
        return {
            "keys": list(self.keys),
            "scope": self.scope,
            "namespace": self.namespace,
            "model": self.model,
            "tag": self.tag,
            "older_than_seconds": self.older_than_seconds,
            "prompt_pattern": self.prompt_pattern,
            "all": self.all,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selector:
        """Inverse of :meth:`as_dict`."""
        older = data.get("older_than_seconds")
        if older is not None and (not isinstance(older, (int, float)) or math.isnan(older)):
            older = None
        return cls(
            keys=tuple(data.get("keys") or ()),
            scope=data.get("scope"),
            namespace=data.get("namespace"),
            model=data.get("model"),
            tag=data.get("tag"),
            older_than_seconds=older,
            prompt_pattern=data.get("prompt_pattern"),
            all=bool(data.get("all", False)),
        )
