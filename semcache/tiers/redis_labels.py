"""L2's feedback labels, as a part of :class:`~semcache.tiers.redis.RedisBackend`.

With no L3, Redis keeps them (:mod:`semcache.feedback_store`): the newest labels in
the list ``{prefix}labels``, every blocked pairing in the set ``{prefix}blocks`` and,
for replicas that missed the pub/sub event, a row ``(pair_id, version, "b")`` in the
change-log stream ``{prefix}log``. With L3 below, L2 only holds the labels L3 missed
in the hash ``{prefix}handoff:labels`` (field: label id) until a replica drains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BackendError, SerializationError
from ..feedback_store import REDIS_MAX_LABELS, Label
from ..versions import next_version

__all__ = ["RedisLabelsPart"]


def _text(raw: Any) -> bytes:
    return raw if isinstance(raw, bytes) else str(raw).encode()


class RedisLabelsPart:
    """Feedback labels in Redis; mixed into the Redis tier."""

    client: Any
    prefix: str
    #: The prefix of these keys: ``prefix``, or ``{prefix}{meta}`` on a cluster.
    _meta: str
    log_max_entries: int
    _errors: Any
    _corrupt: int

    def _translate(self, exc: Exception) -> BackendError:
        raise NotImplementedError

    def _lk(self, name: str) -> str:
        return f"{self._meta}{name}"

    def labels_add(self, labels: Sequence[Label]) -> list[str]:
        """Append labels to ``{prefix}labels`` (trimmed to the newest
        :data:`~semcache.feedback_store.REDIS_MAX_LABELS`); each blocking one adds its
        pairing to ``{prefix}blocks`` and a row to the change-log stream, in one
        transaction. (A retry after a reply lost in a timeout may keep a label twice.)"""
        if not labels:
            return []
        try:
            pipe = self.client.pipeline(transaction=True)
            for lb in labels:
                pipe.rpush(self._lk("labels"), lb.to_json())
                if lb.blocks:
                    pipe.sadd(self._lk("blocks"), lb.pair_id)
                    fields = {"k": lb.pair_id, "v": str(next_version()), "o": "b"}
                    pipe.xadd(self._lk("log"), fields, maxlen=self.log_max_entries, approximate=True)
            pipe.ltrim(self._lk("labels"), -REDIS_MAX_LABELS, -1)
            pipe.execute()
        except self._errors as exc:
            raise self._translate(exc) from exc
        return [lb.id for lb in labels]

    def labels_list(self, kind: str | None = None, namespace: str | None = None, limit: int | None = None) -> list[Label]:
        """Labels kept, oldest first (with ``limit``: the newest ``limit`` of them)."""
        try:
            raws = self.client.lrange(self._lk("labels"), 0, -1)
        except self._errors as exc:
            raise self._translate(exc) from exc
        out: list[Label] = []
        for raw in raws:
            try:
                lb = Label.from_json(_text(raw))
            except SerializationError:
                self._corrupt += 1
                continue
            if lb.matches(kind, namespace):
                out.append(lb)
        return out[-limit:] if limit is not None else out

    def labels_blocking(self, limit: int) -> list[str]:
        """The blocked pairings (a set: in no particular order), at most ``limit``."""
        out: list[str] = []
        try:
            for raw in self.client.sscan_iter(self._lk("blocks"), count=1000):
                out.append(_text(raw).decode())
                if len(out) >= limit:
                    break
        except self._errors as exc:
            raise self._translate(exc) from exc
        return out

    # -- the hand-off of labels L3 missed -----------------------------------------
    def labels_handoff_put(self, labels: Sequence[Label]) -> None:
        """Keep labels L3 missed, by id, until a replica drains them into L3."""
        if not labels:
            return
        try:
            self.client.hset(self._lk("handoff:labels"), mapping={lb.id: lb.to_json() for lb in labels})
        except self._errors as exc:
            raise self._translate(exc) from exc

    def labels_handoff_items(self) -> list[tuple[bytes, Label]]:
        """``(raw, label)`` of the labels waiting for L3 (an unreadable one is dropped)."""
        key = self._lk("handoff:labels")
        out: list[tuple[bytes, Label]] = []
        try:
            for field, raw in self.client.hscan_iter(key, count=500):
                try:
                    out.append((_text(raw), Label.from_json(_text(raw))))
                except SerializationError:
                    self._corrupt += 1
                    self.client.hdel(key, field)
        except self._errors as exc:
            raise self._translate(exc) from exc
        return out

    def labels_handoff_done(self, label_id: str) -> None:
        """Forget a label L3 now holds."""
        try:
            self.client.hdel(self._lk("handoff:labels"), label_id)
        except self._errors as exc:
            raise self._translate(exc) from exc
