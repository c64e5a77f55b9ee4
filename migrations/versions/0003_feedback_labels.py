"""feedback labels: reports on hits, and the pairings they block

Revision ID: 0003_feedback_labels
Revises: 0002_versions_log
Create Date: 2027-01-10 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_feedback_labels"
down_revision = "0002_versions_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "semcache_labels",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("pair_id", sa.String(length=32), nullable=False),
        sa.Column("request_key", sa.String(length=32), nullable=False),
        sa.Column("entry_key", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=255), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("cached_prompt", sa.Text(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("blocks", sa.Boolean(), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("verifier_score", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_semcache_labels")),
    )
    with op.batch_alter_table("semcache_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_semcache_labels_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_semcache_labels_entry_key"), ["entry_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_semcache_labels_namespace"), ["namespace"], unique=False)
        batch_op.create_index(batch_op.f("ix_semcache_labels_pair_id"), ["pair_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("semcache_labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_semcache_labels_pair_id"))
        batch_op.drop_index(batch_op.f("ix_semcache_labels_namespace"))
        batch_op.drop_index(batch_op.f("ix_semcache_labels_entry_key"))
        batch_op.drop_index(batch_op.f("ix_semcache_labels_created_at"))
    op.drop_table("semcache_labels")
