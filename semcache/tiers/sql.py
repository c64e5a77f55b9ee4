"""L3: SQL through SQLAlchemy 2 — the durable source of truth, with embeddings.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL is the shared
production store. The schema comes only from the Alembic revisions; opening a
database at an older revision raises :class:`~semcache.errors.SchemaVersionError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, create_engine, delete, event, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..config import SQLConfig
from ..db.migrate import ensure_schema
from ..db.models import EntryRow, TagRow
from ..errors import BackendError, BackendUnavailable
from ..types import Entry, Selector
from .base import tier_expiry

__all__ = ["SQLBackend", "make_engine"]

_E = cast(Table, EntryRow.__table__)
_T = cast(Table, TagRow.__table__)
_COLS_NO_EMB = [c for c in _E.c if c.name != "embedding"]
_BATCH = 500


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine with the settings semcache needs per dialect."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,  # driver errors must not carry prompts into logs
            connect_args={"timeout": 30, "check_same_thread": False},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url, echo=echo, hide_parameters=True, pool_pre_ping=True, pool_size=10, max_overflow=20
    )


def _dialect_insert(engine: Engine) -> Any:
    """The INSERT construct with ON CONFLICT support for this engine's dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _row_to_entry(row: Any) -> Entry:
    m = row._mapping
    return Entry(
        key=m["key"],
        scope=m["scope"],
        prompt=m["prompt"],
        payload=bytes(m["payload"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        namespace=m["namespace"],
        model=m["model"],
        tags=tuple(m["tags"] or ()),
        metadata=dict(m["metadata"] or {}),
        embedding=bytes(m["embedding"]) if m.get("embedding") is not None else None,
        embedder_id=m["embedder_id"],
        ttl_seconds=m["ttl_seconds"],
    )


def _live(now: Any) -> Any:
    return or_(_E.c.expires_at.is_(None), _E.c.expires_at > now)


# built once: the hot read is a cached statement with two bound parameters
_GET = select(*_COLS_NO_EMB).where(_E.c.key == bindparam("key"), _live(bindparam("now")))


class SQLBackend:
    """L3 tier. ``open()`` (or the first call) connects and checks the schema."""

    name = "l3"
    stores_embeddings = True

    def __init__(
        self,
        url: str,
        *,
        max_ttl_seconds: float | None = None,
        create_if_empty: bool = True,
        auto_upgrade: bool = False,
        echo: bool = False,
        engine: Engine | None = None,
    ) -> None:
        self.url = url
        self.max_ttl_seconds = max_ttl_seconds
        self._create_if_empty = create_if_empty
        self._auto_upgrade = auto_upgrade
        self._echo = echo
        self._engine = engine
        self._open_lock = threading.Lock()
        self._ready = False
        self._corrupt = 0
        self._swept = 0
        # an in-memory SQLite database is one connection shared by every thread:
        # serialise its use (a file or a server has a pool of real connections)
        self._lock: Any = threading.RLock() if url in ("sqlite://", "sqlite:///:memory:") else None

    @classmethod
    def from_config(cls, config: SQLConfig) -> SQLBackend:
        """Build the tier from its :class:`~semcache.config.SQLConfig`."""
        return cls(
            config.url,
            max_ttl_seconds=config.max_ttl_seconds,
            create_if_empty=config.create_if_empty,
            auto_upgrade=config.auto_upgrade,
            echo=config.echo,
        )

    def _guard(self) -> Any:
        return self._lock if self._lock is not None else contextlib.nullcontext()

    @property
    def engine(self) -> Engine:
        """The engine, created and schema-checked on first use."""
        if not self._ready:
            self.open()
        assert self._engine is not None
        return self._engine

    def open(self) -> None:
        """Connect and make sure the schema is at the head revision.

        Raises:
            SchemaVersionError: the database needs ``semcache db upgrade``.
            BackendUnavailable: the database cannot be reached.
        """
        with self._open_lock:
            if self._ready:
                return
            if self._engine is None:
                self._engine = make_engine(self.url, echo=self._echo)
            try:
                ensure_schema(
                    self._engine, self.url, create_if_empty=self._create_if_empty, auto_upgrade=self._auto_upgrade
                )
            except SQLAlchemyError as exc:
                raise BackendUnavailable(f"SQL database is unavailable: {exc}") from exc
            self._ready = True

    def _translate(self, exc: SQLAlchemyError) -> BackendError:
        from sqlalchemy.exc import DisconnectionError, OperationalError

        sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
        if sqlstate.startswith("40"):
            # a deadlock or serialisation failure: this statement lost, the server is fine
            return BackendError(f"SQL transaction conflict ({sqlstate})")
        if isinstance(exc, (OperationalError, DisconnectionError)):
            return BackendUnavailable(f"SQL database is unavailable: {exc.__class__.__name__}: {exc}")
        return BackendError(f"SQL error: {exc.__class__.__name__}: {exc}")

    def get(self, key: str, now: float) -> Entry | None:
        """Read a live entry (without its embedding)."""
        try:
            with self._guard(), self.engine.connect() as conn:
                row = conn.execute(_GET, {"key": key, "now": now}).first()
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        if row is None:
            return None
        try:
            return _row_to_entry(row)
        except (TypeError, ValueError, KeyError):
            # unreadable row: a miss, and removed so it cannot fail again (a corrupt
            # payload is caught where it is decoded, and removed from every tier)
            self._corrupt += 1
            self.delete([key])
            return None

    def _row(self, entry: Entry, now: float) -> dict[str, Any]:
        dim = None
        if entry.embedding is not None:
            dim = len(entry.embedding) // 4
        return {
            "key": entry.key,
            "scope": entry.scope,
            "namespace": entry.namespace,
            "model": entry.model,
            "prompt": entry.prompt,
            "payload": entry.payload,
            "created_at": entry.created_at,
            "expires_at": tier_expiry(entry, now, self.max_ttl_seconds),
            "ttl_seconds": entry.ttl_seconds,
            "tags": list(entry.tags),
            "metadata": entry.metadata,
            "embedding": entry.embedding,
            "embedder_id": entry.embedder_id,
            "dim": dim,
        }

    def set(self, entry: Entry, now: float) -> None:
        """Insert or replace an entry and its tags in one transaction (the commit point)."""
        self.set_many([entry], now)

    def set_many(self, entries: Sequence[Entry], now: float) -> None:
        """Insert or replace many entries in one transaction."""
        if not entries:
            return
        rows = [self._row(e, now) for e in entries]
        keys = [r["key"] for r in rows]
        tags = [{"key": e.key, "tag": t} for e in entries for t in dict.fromkeys(e.tags)]
        engine = self.engine
        insert = _dialect_insert(engine)
        # INSERT ... ON CONFLICT DO UPDATE: concurrent writers of one key (replicas
        # answering the same prompt) replace each other instead of failing
        upsert = insert(_E)
        upsert = upsert.on_conflict_do_update(
            index_elements=[_E.c.key], set_={c.name: upsert.excluded[c.name] for c in _E.c if c.name != "key"}
        )
        try:
            with self._guard(), engine.begin() as conn:
                # the entry rows first: concurrent writers of a key queue on its row
                # lock before touching its tags, so they never deadlock on the tags
                conn.execute(upsert, rows)
                for i in range(0, len(keys), _BATCH):
                    conn.execute(delete(_T).where(_T.c.key.in_(keys[i : i + _BATCH])))
                if tags:
                    conn.execute(insert(_T).on_conflict_do_nothing(), tags)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def touch(self, key: str, expires_at: float | None, now: float) -> None:
        """Move an entry's expiry (sliding expiry), capped by this tier's max TTL."""
        until = expires_at
        if self.max_ttl_seconds is not None:
            cap = now + self.max_ttl_seconds
            until = cap if until is None else min(until, cap)
        try:
            with self._guard(), self.engine.begin() as conn:
                conn.execute(_E.update().where(_E.c.key == key).values(expires_at=until))
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def set_embedding(self, key: str, embedding: bytes, embedder_id: str) -> None:
        """Attach (or replace) the embedding of an existing entry (index repair)."""
        try:
            with self._guard(), self.engine.begin() as conn:
                conn.execute(
                    _E.update()
                    .where(_E.c.key == key)
                    .values(embedding=embedding, embedder_id=embedder_id, dim=len(embedding) // 4)
                )
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def delete(self, keys: Sequence[str]) -> int:
        """Delete entries (and their tags) by key."""
        n = 0
        try:
            with self._guard(), self.engine.begin() as conn:
                for i in range(0, len(keys), _BATCH):
                    chunk = list(keys[i : i + _BATCH])
                    conn.execute(delete(_T).where(_T.c.key.in_(chunk)))
                    n += conn.execute(delete(_E).where(_E.c.key.in_(chunk))).rowcount or 0
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return n

    def _where(self, selector: Selector, now: float) -> list[Any]:
        conds: list[Any] = []
        if selector.keys:
            conds.append(_E.c.key.in_(list(selector.keys)))
        if selector.scope is not None:
            conds.append(_E.c.scope == selector.scope)
        if selector.namespace is not None:
            conds.append(_E.c.namespace == selector.namespace)
        if selector.model is not None:
            conds.append(_E.c.model == selector.model)
        if selector.tag is not None:
            conds.append(_E.c.key.in_(select(_T.c.key).where(_T.c.tag == selector.tag)))
        if selector.older_than_seconds is not None:
            conds.append(_E.c.created_at <= now - selector.older_than_seconds)
        return conds

    def select_keys(self, selector: Selector, now: float) -> list[str]:
        """Keys of the entries ``selector`` matches (live or expired), without deleting."""
        if selector.is_empty():
            return []
        if len(selector.keys) > _BATCH:
            # bind-parameter limits: look the keys up in chunks
            out: list[str] = []
            for i in range(0, len(selector.keys), _BATCH):
                out += self.select_keys(dataclasses.replace(selector, keys=selector.keys[i : i + _BATCH]), now)
            return out
        try:
            with self._guard(), self.engine.connect() as conn:
                if selector.prompt_pattern is None:
                    q = select(_E.c.key).where(*self._where(selector, now))
                    return [r[0] for r in conn.execute(q)]
                q = select(*_COLS_NO_EMB).where(*self._where(selector, now))
                return [r._mapping["key"] for r in conn.execute(q) if selector.matches(_row_to_entry(r), now)]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete every entry ``selector`` matches; return their keys."""
        keys = self.select_keys(selector, now)
        if keys:
            self.delete(keys)
        return keys

    def sweep(self, now: float) -> list[str]:
        """Delete expired rows; return their keys (so the index can drop them too)."""
        try:
            with self._guard(), self.engine.begin() as conn:
                keys = [r[0] for r in conn.execute(select(_E.c.key).where(_E.c.expires_at <= now))]
                for i in range(0, len(keys), _BATCH):
                    chunk = keys[i : i + _BATCH]
                    conn.execute(delete(_T).where(_T.c.key.in_(chunk)))
                    conn.execute(delete(_E).where(_E.c.key.in_(chunk)))
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        self._swept += len(keys)
        return keys

    def iter_embeddings(
        self, embedder_id: str, now: float, batch: int = 5000
    ) -> Iterator[list[tuple[str, str, bytes]]]:
        """Yield batches of ``(key, scope, embedding)`` of live entries embedded by ``embedder_id``."""
        last = ""
        try:
            while True:
                with self._guard(), self.engine.connect() as conn:
                    rows = conn.execute(
                        select(_E.c.key, _E.c.scope, _E.c.embedding)
                        .where(
                            _E.c.embedder_id == embedder_id,
                            _E.c.embedding.is_not(None),
                            _live(now),
                            _E.c.key > last,
                        )
                        .order_by(_E.c.key)
                        .limit(batch)
                    ).all()
                if not rows:
                    return
                last = rows[-1][0]
                yield [(r[0], r[1], bytes(r[2])) for r in rows]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def count(self, now: float | None = None, embedder_id: str | None = None) -> int:
        """Number of rows (live ones only when ``now`` is given)."""
        q = select(func.count()).select_from(_E)
        if now is not None:
            q = q.where(_live(now))
        if embedder_id is not None:
            q = q.where(_E.c.embedder_id == embedder_id, _E.c.embedding.is_not(None))
        try:
            with self._guard(), self.engine.connect() as conn:
                return int(conn.execute(q).scalar_one())
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def list_entries(
        self, selector: Selector | None, now: float, *, limit: int = 50, offset: int = 0
    ) -> list[Entry]:
        """Live entries, newest first, filtered by ``selector`` (for the CLI and API)."""
        q = select(*_COLS_NO_EMB).where(_live(now))
        if selector is not None and not selector.all:
            q = q.where(*self._where(selector, now))
        q = q.order_by(_E.c.created_at.desc(), _E.c.key).limit(limit).offset(offset)
        try:
            with self._guard(), self.engine.connect() as conn:
                out = [_row_to_entry(r) for r in conn.execute(q)]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        if selector is not None and selector.prompt_pattern is not None:
            out = [e for e in out if selector.matches(e, now)]
        return out

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self._guard(), self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def stats(self) -> dict[str, Any]:
        """Counters kept by this process."""
        return {"corrupt_removed": self._corrupt, "swept": self._swept}

    def close(self) -> None:
        """Dispose of the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
        self._ready = False
