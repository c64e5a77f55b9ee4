"""pgvector: the shared vector index in PostgreSQL (semcache_vectors, HNSW)

On PostgreSQL with the pgvector extension available (created here when the role may),
``semcache_vectors`` holds each live entry's embedding in a ``vector`` column with an
HNSW index per dimension (see :mod:`semcache.db.vectors`). Elsewhere — SQLite, or a
server without pgvector — this revision changes nothing, and the cache keeps its
in-process index; ``semcache db upgrade`` creates the table later, once the extension
is there.

Revision ID: 0004_pgvector
Revises: 0003_feedback_labels
Create Date: 2027-02-01 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004_pgvector"
down_revision = "0003_feedback_labels"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from semcache.db.vectors import create_vector_schema

    create_vector_schema(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from semcache.db.vectors import VECTORS

    op.execute(f"DROP TABLE IF EXISTS {VECTORS}")
