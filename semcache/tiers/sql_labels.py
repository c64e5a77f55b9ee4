"""L3's feedback labels (``semcache_labels``), as a part of
:class:`~semcache.tiers.sql.SQLBackend`: what :mod:`semcache.feedback` stores and
replicas load the blocked pairings from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from ..db.models import LabelRow, LogRow
from ..feedback_store import Label
from ..versions import next_version
from .sql_engine import SQLPart, dialect_insert, time_now

__all__ = ["LabelsPart"]

_LB = cast(Table, LabelRow.__table__)
_L = cast(Table, LogRow.__table__)
_FIELDS = list(Label.__dataclass_fields__)


def _label(row: Any) -> Label:
    m = row._mapping
    return Label(**{f: m[f] for f in _FIELDS})


class LabelsPart(SQLPart):
    """Feedback labels; mixed into the SQL tier."""

    def labels_add(self, labels: Sequence[Label]) -> list[str]:
        """Insert labels in one transaction (an id already stored is skipped: a hand-off
        drained twice stores a label once); each new blocking label also appends a
        change-log row ``(pair_id, version, "b")``, which other replicas follow."""
        if not labels:
            return []
        engine = self.engine
        stmt = dialect_insert(engine)(_LB).on_conflict_do_nothing(index_elements=[_LB.c.id]).returning(_LB.c.id)
        rows = [{f: getattr(lb, f) for f in _FIELDS} for lb in {lb.id: lb for lb in labels}.values()]

        def attempt() -> list[str]:
            with self._guard(), engine.begin() as conn:
                # one statement per row: RETURNING over an executemany is not portable
                stored = {x[0] for r in rows for x in conn.execute(stmt, r)}
                log = [
                    {"key": r["pair_id"], "version": next_version(), "op": "b", "at": time_now()}
                    for r in rows
                    if r["blocks"] and r["id"] in stored
                ]
                if log:
                    conn.execute(insert(_L), log)
            return [r["id"] for r in rows if r["id"] in stored]

        return list(self._retry(attempt))

    def labels_list(self, kind: str | None = None, namespace: str | None = None, limit: int | None = None) -> list[Label]:
        """Labels, oldest first (with ``limit``: the newest ``limit`` of them)."""
        q = select(*[_LB.c[f] for f in _FIELDS])
        if kind is not None:
            q = q.where(_LB.c.kind == kind)
        if namespace is not None:
            q = q.where(_LB.c.namespace == namespace)
        q = q.order_by(_LB.c.created_at.desc(), _LB.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        try:
            with self._guard(), self.engine.connect() as conn:
                out = [_label(r) for r in conn.execute(q)]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        out.reverse()
        return out

    def labels_blocking(self, limit: int) -> list[str]:
        """The pair ids of blocked pairings, the most recently reported first."""
        newest = func.max(_LB.c.created_at)
        q = select(_LB.c.pair_id).where(_LB.c.blocks.is_(True)).group_by(_LB.c.pair_id).order_by(newest.desc()).limit(limit)
        try:
            with self._guard(), self.engine.connect() as conn:
                return [str(r[0]) for r in conn.execute(q)]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
