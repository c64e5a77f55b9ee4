"""The L3 schema as SQLAlchemy models. The tables are created only by the Alembic
revisions in ``migrations/``; ``alembic check`` keeps the two in step."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "EntryRow", "TagRow", "metadata"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    """Declarative base bound to the naming convention above."""

    metadata = metadata


class EntryRow(Base):
    """One cached entry: the durable source of truth, with its embedding."""

    __tablename__ = "semcache_entries"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32), index=True)
    namespace: Mapped[str | None] = mapped_column(String(255), index=True)
    model: Mapped[str | None] = mapped_column(String(255), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    expires_at: Mapped[float | None] = mapped_column(Float, index=True)
    ttl_seconds: Mapped[float | None] = mapped_column(Float)
    tags: Mapped[list[str]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedder_id: Mapped[str | None] = mapped_column(String(255))
    dim: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_semcache_entries_embedder_scope", "embedder_id", "scope"),)


class TagRow(Base):
    """(entry, tag) pairs, so invalidation by tag is an indexed query."""

    __tablename__ = "semcache_tags"

    key: Mapped[str] = mapped_column(
        String(32), ForeignKey("semcache_entries.key", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)
