"""Where feedback labels and the pairings they block are kept: the label type, the
storage roles a tier can play, and the in-process store used when no tier can.

A :class:`Label` is one report on a hit (:meth:`~semcache.SemanticCache.feedback`).
Which tier keeps it:

- **L3** (:class:`~semcache.tiers.sql.SQLBackend`): table ``semcache_labels``; a label
  that blocks a pairing also writes a change-log row (op ``b``, key = its
  :func:`pair_id`) in the same transaction, which every replica follows.
- **L2** when it is the lowest tier (:class:`~semcache.tiers.redis.RedisBackend`): the
  labels in the list ``{prefix}labels`` (the newest :data:`REDIS_MAX_LABELS`), the
  blocked pairings in the set ``{prefix}blocks``, and a row in the change-log stream
  ``{prefix}log``. With L3 below, L2 only holds what L3 missed
  (``{prefix}handoff:labels``) until a replica drains it into L3.
- **memory** (:class:`MemoryLabels`), with L1 only: the newest labels of this process.

Roles are found with ``isinstance`` on :class:`LabelStore` and :class:`LabelHandoff`,
like every other tier role (:mod:`semcache.tiers.base`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import SerializationError

__all__ = ["REDIS_MAX_LABELS", "Label", "LabelHandoff", "LabelStore", "MemoryLabels", "pair_id"]

#: Labels the Redis list keeps when Redis is the lowest tier (the oldest go first).
REDIS_MAX_LABELS = 100_000
#: Labels kept in process memory with no shared tier.
MEMORY_MAX_LABELS = 10_000


def pair_id(request_key: str, entry_key: str) -> str:
    """The id of a (request key, entry key) pairing: what a block is stored and followed as."""
    return hashlib.blake2b(f"{request_key}\x1f{entry_key}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Label:
    """One report on a hit: both prompts, where and how the hit was made, the verdict."""

    id: str
    pair_id: str
    request_key: str
    entry_key: str
    scope: str
    namespace: str | None
    model: str | None
    #: ``exact`` or ``semantic``.
    kind: str
    prompt: str
    cached_prompt: str
    correct: bool
    #: A wrong report on a semantic hit: the pairing is never served again (not for
    #: an LLM audit's disagreement unless ``Policy.audit_block``).
    blocks: bool
    similarity: float | None
    verifier_score: float | None
    #: ``user`` or ``llm``.
    source: str
    created_at: float

    def as_row(self) -> dict[str, Any]:
        """The row :func:`semcache.feedback.load_labels` returns."""
        return {
            "prompt": self.prompt,
            "cached_prompt": self.cached_prompt,
            "correct": self.correct,
            "namespace": self.namespace,
            "entry_id": self.entry_key,
            "similarity": self.similarity,
            "verifier_score": self.verifier_score,
            "source": self.source,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        """The label as JSON text (Redis)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Label:
        """Inverse of :meth:`to_json`.

        Raises:
            SerializationError: not a label.
        """
        try:
            d = json.loads(raw)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializationError(f"not a semcache label: {exc}") from exc

    def matches(self, kind: str | None, namespace: str | None) -> bool:
        """Whether the label is of ``kind`` and in ``namespace`` (``None``: any)."""
        return (kind is None or self.kind == kind) and (namespace is None or self.namespace == namespace)


@runtime_checkable
class LabelStore(Protocol):
    """A tier that keeps labels and the pairings they block (L3; L2 when it is the lowest)."""

    def labels_add(self, labels: Sequence[Label]) -> list[str]:
        """Store labels (a label already stored, by id, is skipped) and, for those that
        block, the pairing and its change-log row; return the ids stored now."""
        ...

    def labels_list(self, kind: str | None = None, namespace: str | None = None, limit: int | None = None) -> list[Label]:
        """Labels, oldest first (with ``limit``: the newest ``limit`` of them)."""
        ...

    def labels_blocking(self, limit: int) -> list[str]:
        """The pair ids of blocked pairings, the most recently reported first."""
        ...


@runtime_checkable
class LabelHandoff(Protocol):
    """A shared tier that durably holds labels L3 missed while it was down (Redis)."""

    def labels_handoff_put(self, labels: Sequence[Label]) -> None:
        """Keep labels L3 missed."""
        ...

    def labels_handoff_items(self) -> list[tuple[bytes, Label]]:
        """``(raw, label)`` of every label waiting."""
        ...

    def labels_handoff_done(self, label_id: str) -> None:
        """Forget a label L3 now holds."""
        ...


class MemoryLabels:
    """Labels in this process's memory (L1 only): the newest :data:`MEMORY_MAX_LABELS`."""

    def __init__(self, max_labels: int = MEMORY_MAX_LABELS) -> None:
        self._labels: deque[Label] = deque(maxlen=max_labels)
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def labels_add(self, labels: Sequence[Label]) -> list[str]:
        """Keep labels (the oldest are dropped past the bound)."""
        out: list[str] = []
        with self._lock:
            for label in labels:
                if label.id in self._ids:
                    continue
                if len(self._labels) == self._labels.maxlen:
                    self._ids.discard(self._labels[0].id)
                self._labels.append(label)
                self._ids.add(label.id)
                out.append(label.id)
        return out

    def labels_list(self, kind: str | None = None, namespace: str | None = None, limit: int | None = None) -> list[Label]:
        """Labels kept, oldest first."""
        with self._lock:
            out = [lb for lb in self._labels if lb.matches(kind, namespace)]
        return out[-limit:] if limit is not None else out

    def labels_blocking(self, limit: int) -> list[str]:
        """Pair ids of the blocking labels kept, newest first."""
        with self._lock:
            return list(dict.fromkeys(lb.pair_id for lb in reversed(self._labels) if lb.blocks))[:limit]
