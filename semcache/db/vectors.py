"""The pgvector part of L3's schema, on PostgreSQL only: ``semcache_vectors`` and its
HNSW indexes.

One row per live entry that has an embedding, written in the entry's own transaction
(:class:`~semcache.tiers.sql.SQLBackend`) and removed with it (a tombstone deletes the
row; a row removed outright cascades)::

    semcache_vectors(key PK -> semcache_entries.key ON DELETE CASCADE,
                     scope, embedder_id, dim, embedding vector)

The column is an untyped ``vector`` so that embedders of any dimension share the
table; each dimension gets a partial HNSW index on an expression cast to its size,
``(embedding::vector(384)) vector_ip_ops WHERE dim = 384``, which the search repeats
verbatim so that the planner can use it (pgvector's documented way of indexing several
dimensions in one column). The revision ``0004_pgvector`` creates the extension (when
the database role may), the table, a btree on ``(embedder_id, scope)`` and the HNSW
index for 384 dimensions, the default embedder's; another dimension's index is made by
:func:`ensure_hnsw_index` when a cache with such an embedder opens.

The table is left out of the ORM metadata (``alembic check``) because it exists only
where the extension does.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

__all__ = [
    "DEFAULT_DIMS",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_M",
    "MAX_DIM",
    "VECTORS",
    "create_vector_schema",
    "ensure_hnsw_index",
    "extension_state",
    "has_vector_table",
    "hnsw_index_name",
    "missing_message",
]

log = logging.getLogger("semcache")

VECTORS = "semcache_vectors"
#: pgvector's HNSW defaults: 16 links per node, a candidate list of 64 while building.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
#: The dimensions the revision indexes (all-MiniLM-L6-v2's).
DEFAULT_DIMS = (384,)
#: pgvector indexes ``vector`` columns of at most 2,000 dimensions.
MAX_DIM = 2000


def extension_state(conn: Any) -> str:
    """``installed``, ``available`` (the server has it; not yet created in this
    database) or ``missing`` (the server has no pgvector)."""
    if conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first() is not None:
        return "installed"
    if conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is not None:
        return "available"
    return "missing"


def has_vector_table(conn: Any) -> bool:
    """Whether ``semcache_vectors`` exists in the connection's search path."""
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": VECTORS}).scalar() is not None


def hnsw_index_name(dim: int) -> str:
    return f"ix_{VECTORS}_hnsw_{int(dim)}"


def _create_index_sql(dim: int) -> str:
    d = int(dim)
    return (
        f"CREATE INDEX IF NOT EXISTS {hnsw_index_name(d)} ON {VECTORS} "
        f"USING hnsw ((embedding::vector({d})) vector_ip_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE dim = {d}"
    )


def create_vector_schema(conn: Any, dims: tuple[int, ...] = DEFAULT_DIMS) -> bool:
    """Create the extension when this role may, then the table and its indexes.

    Returns ``False`` (creating nothing) when the server has no pgvector or the role
    may not create the extension: the cache then uses its in-process index.
    """
    state = extension_state(conn)
    if state == "missing":
        log.info("PostgreSQL has no pgvector extension: semantic search stays in process")
        return False
    if state == "available":
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError as exc:
            log.warning("could not create the pgvector extension (%s): semantic search stays in process", exc.orig)
            return False
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {VECTORS} ("
            "key VARCHAR(32) NOT NULL, "
            "scope VARCHAR(32) NOT NULL, "
            "embedder_id VARCHAR(255) NOT NULL, "
            "dim INTEGER NOT NULL, "
            "embedding vector NOT NULL, "
            f"CONSTRAINT pk_{VECTORS} PRIMARY KEY (key), "
            f"CONSTRAINT fk_{VECTORS}_key_semcache_entries FOREIGN KEY (key) "
            "REFERENCES semcache_entries (key) ON DELETE CASCADE)"
        )
    )
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{VECTORS}_embedder_scope ON {VECTORS} (embedder_id, scope)"))
    for dim in dims:
        conn.execute(text(_create_index_sql(dim)))
    return True


def ensure_hnsw_index(conn: Any, dim: int) -> None:
    """The HNSW index for ``dim`` dimensions, made if missing (a new embedder's size)."""
    if not 0 < int(dim) <= MAX_DIM:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            f"pgvector indexes at most {MAX_DIM} dimensions; this embedder has {dim}: use IndexConfig(backend='faiss')"
        )
    exists = conn.execute(text("SELECT to_regclass(:i)"), {"i": hnsw_index_name(dim)}).scalar()
    if exists is None:
        log.info("creating the pgvector HNSW index for %d dimensions", dim)
        conn.execute(text(_create_index_sql(dim)))


def missing_message(url: str, state: str) -> str:
    """What to run when ``index='pgvector'`` is asked for and L3 has no vectors table."""
    from ..config import redact_url

    where = redact_url(url)
    if state == "missing":
        return (
            f"IndexConfig(backend='pgvector'), but the PostgreSQL at {where} has no pgvector extension: "
            "install it on the server (Debian: apt install postgresql-<version>-pgvector), run "
            "`CREATE EXTENSION vector;` in that database as a role allowed to, then `semcache db upgrade` "
            "(or use IndexConfig(backend='faiss'))"
        )
    return (
        f"IndexConfig(backend='pgvector'), but the database at {where} has no {VECTORS} table: "
        + (
            "the pgvector extension is not created there and this role may not create it: run "
            "`CREATE EXTENSION vector;` in that database as a superuser, then `semcache db upgrade`"
            if state == "available"
            else "run `semcache db upgrade`"
        )
    )
