"""initial schema

Revision ID: 0001_initial
Revises: 
Create Date: 2026-11-24 00:36:15.234380
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('semcache_entries',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('namespace', sa.String(length=255), nullable=True),
    sa.Column('model', sa.String(length=255), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('ttl_seconds', sa.Float(), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=True),
    sa.Column('embedder_id', sa.String(length=255), nullable=True),
    sa.Column('dim', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_semcache_entries'))
    )
    with op.batch_alter_table('semcache_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_semcache_entries_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_semcache_entries_embedder_scope', ['embedder_id', 'scope'], unique=False)
        batch_op.create_index(batch_op.f('ix_semcache_entries_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_semcache_entries_model'), ['model'], unique=False)
        batch_op.create_index(batch_op.f('ix_semcache_entries_namespace'), ['namespace'], unique=False)
        batch_op.create_index(batch_op.f('ix_semcache_entries_scope'), ['scope'], unique=False)

    op.create_table('semcache_tags',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['key'], ['semcache_entries.key'], name=op.f('fk_semcache_tags_key_semcache_entries'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'tag', name=op.f('pk_semcache_tags'))
    )
    with op.batch_alter_table('semcache_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_semcache_tags_tag'), ['tag'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('semcache_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_semcache_tags_tag'))

    op.drop_table('semcache_tags')
    with op.batch_alter_table('semcache_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_semcache_entries_scope'))
        batch_op.drop_index(batch_op.f('ix_semcache_entries_namespace'))
        batch_op.drop_index(batch_op.f('ix_semcache_entries_model'))
        batch_op.drop_index(batch_op.f('ix_semcache_entries_expires_at'))
        batch_op.drop_index('ix_semcache_entries_embedder_scope')
        batch_op.drop_index(batch_op.f('ix_semcache_entries_created_at'))

    op.drop_table('semcache_entries')
