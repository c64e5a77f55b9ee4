"""L3's shared vector index on PostgreSQL with pgvector, as a part of
:class:`~semcache.tiers.sql.SQLBackend` (the schema: :mod:`semcache.db.vectors`).

Each write of an entry with an embedding upserts its row in ``semcache_vectors`` in the
same transaction as the entry; a tombstone deletes it in the delete's transaction, and
rows removed outright (flush, sweep) take their vector with them by cascade. So a
committed entry is searchable by every replica at once, and a removed one by none.

A scope with fewer than ``exact_below`` vectors (1,000 by default) is searched exactly:
its rows through the ``(embedder_id, scope)`` btree, every distance computed, sorted. That
is decided in the statement itself (a count of the scope's rows, bounded by
``exact_below``, gates one branch or the other), never left to the planner: on a table it
has no statistics for (a new one, or one churned faster than autovacuum analyzes it) the
planner takes the HNSW scan for a handful of rows too, and that scan is an approximation
which, under churn of the same vectors (entries set, invalidated and set again, the graph
full of dead tuples), can end without reaching a committed row: seen with four keys after a
few thousand such calls from one thread, where a key set just before was missed by the
next semantic read of it while an exact search of the same rows found it.

A larger scope is searched inside the HNSW index with the scope and the embedder as hard
filters: pgvector's iterative index scan (``hnsw.iterative_scan = strict_order``, pgvector
0.8) keeps walking the graph until ``k`` rows of *this* scope are found (or
``hnsw.max_scan_tuples`` were visited), so the nearest entry of another tenant or model
never takes a place in the answer; like any HNSW search it may miss a neighbour (the
in-process index is approximate past ``hnsw_min_entries`` too). The statement is planned
for its scope at every execution (``plan_cache_mode = force_custom_plan``): a generic plan
of the prepared statement would take the HNSW scan for a tiny scope too, and the
iterative scan gives up after ``max_scan_tuples`` before finding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from ..db.vectors import VECTORS, ensure_hnsw_index, extension_state, has_vector_table
from ..errors import MissingDependencyError
from ..types import Entry
from .sql_engine import SQLPart, dialect_insert

__all__ = ["EXACT_BELOW", "VectorsPart", "search_sql", "vector_text"]


def _vector_type() -> Any:
    try:
        from pgvector.sqlalchemy import VECTOR
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("pgvector", "postgres") from exc
    return VECTOR


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form of a vector (``[x,y,...]``)."""
    return "[" + ",".join(map(repr, np.asarray(v, dtype=np.float32).ravel().tolist())) + "]"


_table: Table | None = None

#: The search's settings, for the session of the pooled connection that runs it: the
#: HNSW candidate list, the iterative scan with its budget, and a plan made for each
#: search's own scope (never a generic plan of the prepared statement: a small scope takes
#: its btree and an exact sort, a large one the HNSW scan), and no parallel workers: the
#: planner plans the exact branch of a large scope with a Gather of two workers that are
#: started even though its one-time filter is false, which cost 5-6 ms of a 9 ms search of
#: a 50,000-vector scope. Besides that, they change nothing else the SQL tier runs on that
#: connection (its other statements are key lookups, which never run in parallel anyway)
#: but for re-planning its prepared statements.
_SETTINGS = text(
    "SELECT set_config('hnsw.ef_search', :ef, false), "
    "set_config('hnsw.iterative_scan', 'strict_order', false), "
    "set_config('hnsw.max_scan_tuples', :mst, false), "
    "set_config('plan_cache_mode', 'force_custom_plan', false), "
    "set_config('max_parallel_workers_per_gather', '0', false)"
)
_SETTINGS_MARK = "semcache_vector_search"
#: Scopes with fewer vectors than this are searched exactly (every distance computed),
#: whatever the planner would choose: see the module's docstring.
EXACT_BELOW = 1_000


def _vectors_table() -> Table:
    global _table
    if _table is None:
        _table = Table(
            VECTORS,
            MetaData(),
            Column("key", String(32), primary_key=True),
            Column("scope", String(32), nullable=False),
            Column("embedder_id", String(255), nullable=False),
            Column("dim", Integer, nullable=False),
            Column("embedding", _vector_type()(), nullable=False),
        )
    return _table


def search_sql(dim: int) -> str:
    """The search statement for vectors of ``dim`` dimensions, with the parameters ``:q``
    (the query vector's text), ``:m`` (embedder id), ``:s`` (scope), ``:k`` and ``:exact``
    (scopes with fewer rows are searched exactly): see the module's docstring."""
    d = int(dim)
    # the dimension is written into the statement, not bound: the partial HNSW index
    # (WHERE dim = d, on embedding::vector(d)) must match it at plan time
    dist = f"(embedding::vector({d}) <#> CAST(:q AS vector({d})))"
    where = f"dim = {d} AND embedder_id = :m AND scope = :s"
    return (
        # how many rows the scope has, counted up to :exact (the btree, no vector read);
        # each branch runs only when its condition holds (a one-time filter)
        f"WITH n AS MATERIALIZED (SELECT count(*) AS c FROM (SELECT 1 FROM {VECTORS} WHERE {where} LIMIT :exact) AS s) "
        # a small scope: every distance, sorted ("+ 0": no index gives that order)
        f"(SELECT key, {dist} + 0 AS d FROM {VECTORS} "
        f"WHERE {where} AND (SELECT c FROM n) < :exact ORDER BY {dist} + 0, key LIMIT :k) "
        "UNION ALL "
        # a large one: the HNSW scan
        f"(SELECT key, {dist} AS d FROM {VECTORS} "
        f"WHERE {where} AND (SELECT c FROM n) >= :exact ORDER BY {dist} LIMIT :k)"
    )


class VectorsPart(SQLPart):
    """The pgvector table's reads and writes; mixed into the SQL tier."""

    #: Whether L3 holds ``semcache_vectors`` (PostgreSQL with pgvector), found at open.
    has_vectors: bool = False
    _search_stmts: dict[int, Any]

    # -- at open -----------------------------------------------------------------
    def _detect_vectors(self, engine: Any) -> None:
        """Whether this database has the vectors table (PostgreSQL only)."""
        self.has_vectors = False
        if engine.dialect.name != "postgresql":
            return
        with engine.connect() as conn:
            self.has_vectors = has_vector_table(conn)
        self._search_stmts = {}

    def vector_extension_state(self) -> str:
        """``installed``, ``available``, ``missing``, or ``not-postgresql``."""
        engine = self.engine
        if engine.dialect.name != "postgresql":
            return "not-postgresql"
        try:
            with engine.connect() as conn:
                return extension_state(conn)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def ensure_vector_dim(self, dim: int) -> None:
        """Make the HNSW index for ``dim`` dimensions if it is missing."""
        try:
            with self._guard(), self.engine.begin() as conn:
                # replicas opening together: one builds, the others wait on the lock
                conn.execute(text("SELECT pg_advisory_xact_lock(74696565)"))
                ensure_hnsw_index(conn, dim)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    # -- in the entry's transaction ---------------------------------------------
    def _vectors_write(self, conn: Any, entries: Sequence[Entry]) -> None:
        """Upsert the vectors of ``entries`` that have one; delete those of the rest
        (an entry rewritten without an embedding leaves the index)."""
        if not self.has_vectors or not entries:
            return
        t = _vectors_table()
        rows: list[dict[str, Any]] = []
        bare: list[str] = []
        for e in entries:
            if e.embedding is None or not e.embedder_id or len(e.embedding) % 4:
                bare.append(e.key)
                continue
            v = np.frombuffer(e.embedding, dtype=np.float32)
            if not np.isfinite(v).all():
                bare.append(e.key)  # a corrupt vector is never searched
                continue
            rows.append({"key": e.key, "scope": e.scope, "embedder_id": e.embedder_id, "dim": int(v.size), "embedding": v})
        if rows:
            ins = dialect_insert(self.engine)(t)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[t.c.key],
                    set_={c: ins.excluded[c] for c in ("scope", "embedder_id", "dim", "embedding")},
                ),
                rows,
            )
        if bare:
            self._vectors_delete(conn, bare)

    def _vectors_delete(self, conn: Any, keys: Sequence[str]) -> None:
        if not self.has_vectors or not keys:
            return
        t = _vectors_table()
        for i in range(0, len(keys), 500):
            conn.execute(delete(t).where(t.c.key.in_(list(keys[i : i + 500]))))

    # -- the index's reads -------------------------------------------------------
    def _search_stmt(self, dim: int) -> Any:
        stmt = self._search_stmts.get(dim)
        if stmt is None:
            stmt = self._search_stmts[dim] = text(search_sql(dim))
        return stmt

    def vector_search(
        self,
        scope: str,
        embedder_id: str,
        vector: np.ndarray,
        k: int,
        *,
        ef_search: int,
        max_scan_tuples: int,
        exact_below: int = EXACT_BELOW,
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest keys of ``scope`` embedded by ``embedder_id`` with their
        inner products, best first: exactly when the scope has fewer than
        ``exact_below`` vectors, else by the HNSW index."""
        v = np.asarray(vector, dtype=np.float32).ravel()
        stmt = self._search_stmt(int(v.size))
        settings = (int(max(ef_search, k)), int(max_scan_tuples))
        try:
            with self._guard(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                # the search's settings once per pooled connection, for its session: then a
                # search is one statement, with no transaction around it
                info = conn.connection.info
                if info.get(_SETTINGS_MARK) != settings:
                    conn.execute(_SETTINGS, {"ef": str(settings[0]), "mst": str(settings[1])})
                    info[_SETTINGS_MARK] = settings
                rows = conn.execute(
                    stmt, {"q": vector_text(v), "m": embedder_id, "s": scope, "k": int(k), "exact": max(1, int(exact_below))}
                ).all()
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        # <#> is the negative inner product
        return [(str(r[0]), -float(r[1])) for r in rows]

    def vector_count(self, embedder_id: str | None = None, dim: int | None = None) -> int:
        t = _vectors_table()
        q = select(text("count(*)")).select_from(t)
        if embedder_id is not None:
            q = q.where(t.c.embedder_id == embedder_id)
        if dim is not None:
            q = q.where(t.c.dim == dim)
        try:
            with self._guard(), self.engine.connect() as conn:
                return int(conn.execute(q).scalar_one())
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def vector_keys(self, embedder_id: str | None = None, live_at: float | None = None) -> set[str]:
        """Keys of the vectors (of ``embedder_id``; with ``live_at``, of entries live then)."""
        from ..db.models import EntryRow

        t = _vectors_table()
        q = select(t.c.key)
        if embedder_id is not None:
            q = q.where(t.c.embedder_id == embedder_id)
        if live_at is not None:
            e = EntryRow.__table__.c
            q = q.join(EntryRow.__table__, e.key == t.c.key).where(
                e.deleted.is_(False), (e.expires_at.is_(None)) | (e.expires_at > live_at)
            )
        try:
            with self._guard(), self.engine.connect() as conn:
                return {str(r[0]) for r in conn.execute(q)}
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def vector_has(self, key: str, embedder_id: str | None = None) -> bool:
        t = _vectors_table()
        q = select(t.c.key).where(t.c.key == key)
        if embedder_id is not None:
            q = q.where(t.c.embedder_id == embedder_id)
        try:
            with self._guard(), self.engine.connect() as conn:
                return conn.execute(q).first() is not None
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
