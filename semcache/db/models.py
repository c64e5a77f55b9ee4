"""The L3 schema as SQLAlchemy models. The tables are created only by the Alembic
revisions in ``migrations/``; ``alembic check`` keeps the two in step."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "EntryRow", "LabelRow", "LogRow", "MetaRow", "TagRow", "metadata"]

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
    #: The write's version (semcache.versions): an upsert never replaces a higher one.
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    #: A tombstone: the key was deleted by the write with this ``version``.
    deleted: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (Index("ix_semcache_entries_embedder_scope", "embedder_id", "scope"),)


class TagRow(Base):
    """(entry, tag) pairs, so invalidation by tag is an indexed query."""

    __tablename__ = "semcache_tags"

    key: Mapped[str] = mapped_column(
        String(32), ForeignKey("semcache_entries.key", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class LogRow(Base):
    """The change log: one row per write or delete committed to L3, in commit order on
    SQLite (``seq``). Replicas read it from their last ``seq`` to drop what they hold
    of keys changed elsewhere; recovering tiers replay it."""

    __tablename__ = "semcache_log"
    # SQLite: never reuse a seq after the log is swept empty (replicas follow by seq)
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    #: ``None`` for a flush.
    key: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(BigInteger)
    #: ``s`` a write, ``d`` a delete, ``f`` a flush.
    op: Mapped[str] = mapped_column(String(1))
    at: Mapped[float] = mapped_column(Float, index=True)


class MetaRow(Base):
    """Named integers shared by every replica: the flush floor, the L2 repair mark."""

    __tablename__ = "semcache_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LabelRow(Base):
    """One feedback report on a hit: the request and the cached prompt, the verdict and
    how the hit was made (:mod:`semcache.feedback`). A wrong report on a semantic hit
    (``blocks``) keeps that request from being answered by that entry in every replica:
    replicas load the blocked ``pair_id`` values at open and follow new ones through
    the change log (op ``b``)."""

    __tablename__ = "semcache_labels"

    #: A random id (a report handed off and drained twice is stored once).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: ``H(request_key, entry_key)``: what a replica holds in memory to block the pairing.
    pair_id: Mapped[str] = mapped_column(String(32), index=True)
    #: The exact key of the request (its normalised prompt in its scope).
    request_key: Mapped[str] = mapped_column(String(32))
    entry_key: Mapped[str] = mapped_column(String(32), index=True)
    scope: Mapped[str] = mapped_column(String(32))
    namespace: Mapped[str | None] = mapped_column(String(255), index=True)
    model: Mapped[str | None] = mapped_column(String(255))
    #: ``exact`` or ``semantic``: how the reported hit was made.
    kind: Mapped[str] = mapped_column(String(8))
    prompt: Mapped[str] = mapped_column(Text)
    cached_prompt: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    #: A wrong report on a semantic hit: the pairing is never served again.
    blocks: Mapped[bool] = mapped_column(Boolean)
    similarity: Mapped[float | None] = mapped_column(Float)
    verifier_score: Mapped[float | None] = mapped_column(Float)
    #: Who judged: ``user`` or ``llm``.
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float, index=True)
