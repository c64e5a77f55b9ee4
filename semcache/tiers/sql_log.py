"""L3's change log and shared marks (``semcache_log``, ``semcache_meta``), as a part of
:class:`~semcache.tiers.sql.SQLBackend`: what replicas follow and recovering tiers replay."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..db.models import LogRow, MetaRow
from .sql_engine import SQLPart, dialect_insert

__all__ = ["ChangeLogPart"]

_L = cast(Table, LogRow.__table__)
_M = cast(Table, MetaRow.__table__)


class ChangeLogPart(SQLPart):
    """The change log and shared marks; mixed into the SQL tier."""

    def log_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str | None, int, str]]:
        """``(seq, key, version, op)`` of the log rows after ``seq``, oldest first."""
        try:
            with self._guard(), self.engine.connect() as conn:
                rows = conn.execute(
                    select(_L.c.seq, _L.c.key, _L.c.version, _L.c.op).where(_L.c.seq > seq).order_by(_L.c.seq).limit(limit)
                ).all()
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return [(int(r[0]), r[1], int(r[2]), str(r[3])) for r in rows]

    def log_rows(self, seqs: list[int]) -> list[tuple[int, str | None, int, str]]:
        """The log rows with these numbers (those that exist), oldest first."""
        if not seqs:
            return []
        try:
            with self._guard(), self.engine.connect() as conn:
                rows = conn.execute(
                    select(_L.c.seq, _L.c.key, _L.c.version, _L.c.op).where(_L.c.seq.in_(seqs[:1000])).order_by(_L.c.seq)
                ).all()
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return [(int(r[0]), r[1], int(r[2]), str(r[3])) for r in rows]

    def log_head(self) -> int:
        """The last ``seq`` in the log (0 when empty)."""
        try:
            with self._guard(), self.engine.connect() as conn:
                return int(conn.execute(select(func.max(_L.c.seq))).scalar() or 0)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def mark_get(self, name: str) -> int | None:
        """A shared mark's value, or ``None``."""
        try:
            with self._guard(), self.engine.connect() as conn:
                v = conn.execute(select(_M.c.value).where(_M.c.name == name)).scalar()
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return None if v is None else int(v)

    def mark_lower(self, name: str, value: int) -> None:
        """Set a shared mark to ``value`` unless it is already lower."""
        try:
            with self._guard(), self.engine.begin() as conn:
                if conn.execute(update(_M).where(_M.c.name == name, _M.c.value > value).values(value=value)).rowcount:
                    return
                if conn.execute(select(_M.c.value).where(_M.c.name == name)).scalar() is None:
                    conn.execute(dialect_insert(self.engine)(_M).values(name=name, value=value).on_conflict_do_nothing())
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def mark_clear(self, name: str, value: int) -> bool:
        """Remove a shared mark if it still has ``value``; return whether it did."""
        try:
            with self._guard(), self.engine.begin() as conn:
                return bool(conn.execute(delete(_M).where(_M.c.name == name, _M.c.value == value)).rowcount)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
