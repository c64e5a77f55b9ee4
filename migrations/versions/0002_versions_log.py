"""versioned entries, tombstones, the change log and shared marks

Revision ID: 0002_versions_log
Revises: 0001_initial
Create Date: 2026-12-01 22:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_versions_log"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("semcache_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "semcache_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=32), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(length=1), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_semcache_log")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("semcache_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_semcache_log_at"), ["at"], unique=False)
    op.create_table(
        "semcache_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_semcache_meta")),
    )


def downgrade() -> None:
    op.drop_table("semcache_meta")
    with op.batch_alter_table("semcache_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_semcache_log_at"))
    op.drop_table("semcache_log")
    with op.batch_alter_table("semcache_entries", schema=None) as batch_op:
        batch_op.drop_column("deleted")
        batch_op.drop_column("version")
