"""L3: SQL through SQLAlchemy 2 — the durable source of truth, with embeddings.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL is the shared
production store. The schema comes only from the Alembic revisions; opening a
database at an older revision raises :class:`~semcache.errors.SchemaVersionError`.

Versioned: an upsert applies only when its version is higher than the row's, and a
delete turns the row into a *tombstone* (``deleted``, with the delete's version), so
an older write replayed late never replaces a newer write or a delete. Every write
and delete appends to the change log (``semcache_log``) in the same transaction;
other replicas read it to drop what they hold of changed keys. A flush raises the
shared floor (``semcache_meta``): nothing older is written again. Feedback labels
live in ``semcache_labels`` (:mod:`semcache.tiers.sql_labels`). On PostgreSQL with
pgvector, each entry's embedding is also written, in the same transaction, to the shared
vector index ``semcache_vectors`` (:mod:`semcache.tiers.sql_vectors`).

A SQLite file found damaged (at open, by ``PRAGMA quick_check``, or by the first
statement that fails on it) raises :class:`~semcache.errors.BackendFailed`: the
tier reports failed and no write is acknowledged to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table, and_, bindparam, delete, func, insert, or_, select
from sqlalchemy.exc import SQLAlchemyError

from ..config import SQLConfig
from ..db.migrate import ensure_schema
from ..db.models import EntryRow, LogRow, MetaRow, TagRow
from ..errors import BackendError, BackendFailed, BackendUnavailable
from ..types import Entry, Selector
from .base import tier_expiry
from .sql_engine import dialect_insert, make_engine, quick_check, time_now, translate
from .sql_labels import LabelsPart
from .sql_log import ChangeLogPart
from .sql_vectors import VectorsPart

__all__ = ["SQLBackend", "make_engine"]

T = TypeVar("T")
_E = cast(Table, EntryRow.__table__)
_T = cast(Table, TagRow.__table__)
_L = cast(Table, LogRow.__table__)
_M = cast(Table, MetaRow.__table__)
_COLS_NO_EMB = [c for c in _E.c if c.name not in ("embedding", "deleted")]
_BATCH = 500
#: The flush floor's name in ``semcache_meta``.
FLOOR = "flush_floor"
#: The columns of a tombstone row (with ``created_at`` = the time of the delete).
_TOMB_FIELDS: dict[str, Any] = {
    "scope": "", "namespace": None, "model": None, "prompt": "", "payload": b"", "created_at": 0.0,
    "expires_at": 0.0, "ttl_seconds": None, "tags": [], "metadata": {}, "embedding": None,
    "embedder_id": None, "dim": None, "deleted": True,
}


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
        version=int(m["version"] or 0),
    )


def _live(now: Any) -> Any:
    return and_(_E.c.deleted.is_(False), or_(_E.c.expires_at.is_(None), _E.c.expires_at > now))


# built once: the hot read is a cached statement with two bound parameters
_GET = select(*_COLS_NO_EMB).where(_E.c.key == bindparam("key"), _live(bindparam("now")))


class SQLBackend(ChangeLogPart, LabelsPart, VectorsPart):
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
        timeout_seconds: float = 5.0,
        tombstone_retention_seconds: float = 7 * 24 * 3600.0,
        log_retention_seconds: float = 24 * 3600.0,
    ) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.tombstone_retention_seconds = tombstone_retention_seconds
        self.log_retention_seconds = log_retention_seconds
        self.max_ttl_seconds = max_ttl_seconds
        self._create_if_empty = create_if_empty
        self._auto_upgrade = auto_upgrade
        self._echo = echo
        self._engine = engine
        self._open_lock = threading.Lock()
        self._stmts: tuple[Any, Any, Any] | None = None
        self._checked_at = -1e9
        self._damaged = False
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
            timeout_seconds=config.timeout_seconds,
            tombstone_retention_seconds=config.tombstone_retention_seconds,
            log_retention_seconds=config.log_retention_seconds,
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
                self._engine = make_engine(self.url, echo=self._echo, timeout_seconds=self.timeout_seconds)
            try:
                self._quick_check(self._engine)
                ensure_schema(
                    self._engine, self.url, create_if_empty=self._create_if_empty, auto_upgrade=self._auto_upgrade
                )
                self._detect_vectors(self._engine)
            except SQLAlchemyError as exc:
                err = self._translate(exc)
                if isinstance(err, BackendFailed):
                    raise err from exc
                raise BackendUnavailable(f"SQL database is unavailable: {exc}") from exc
            self._ready = True

    @property
    def opened(self) -> bool:
        """Whether :meth:`open` has connected and checked the schema."""
        return self._ready

    def _quick_check(self, engine: Engine) -> None:
        try:
            quick_check(engine)
        except BackendFailed:
            self._damaged = True
            raise
        self._damaged = False

    def _translate(self, exc: SQLAlchemyError) -> BackendError:
        err = translate(exc)
        if isinstance(err, BackendFailed):
            self._damaged = True  # the next health check reads the whole file again
        return err

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
            "version": entry.version,
            "deleted": False,
        }

    def set(self, entry: Entry, now: float, *, token: int | None = None) -> bool:
        """Insert or replace an entry and its tags in one transaction (the commit point),
        unless L3 holds a newer version or delete of its key; return whether it applied."""
        return bool(self.set_many([entry], now))

    def set_many(self, entries: Sequence[Entry], now: float) -> list[str]:
        """Insert or replace many entries in one transaction; return the keys written
        (a key whose row holds a newer version or delete is not)."""
        return self._upsert(entries, now, check_floor=False)

    def replay_writes(self, entries: Sequence[Entry], now: float) -> list[str]:
        """:meth:`set_many` for writes replayed after an outage: also refused below the
        flush floor (a flush that came after them). Fresh writes need no such check:
        their versions are newer than any flush that returned before they began."""
        return self._upsert(entries, now, check_floor=True)

    def _statements(self, engine: Engine) -> tuple[Any, Any, Any]:
        """The upsert, tombstone and tag statements, built once per dialect."""
        if self._stmts is None:
            ins = dialect_insert(engine)
            # INSERT ... ON CONFLICT DO UPDATE ... WHERE row.version <= new.version:
            # concurrent writers of one key keep the newest, whatever order they commit in
            up = ins(_E)
            up = up.on_conflict_do_update(
                index_elements=[_E.c.key],
                set_={c.name: up.excluded[c.name] for c in _E.c if c.name != "key"},
                where=_E.c.version <= up.excluded.version,
            ).returning(_E.c.key)
            tomb = ins(_E)
            tomb = tomb.on_conflict_do_update(
                index_elements=[_E.c.key],
                set_={name: tomb.excluded[name] for name in [*_TOMB_FIELDS, "version"]},
                where=_E.c.version < tomb.excluded.version,
            ).returning(_E.c.key)
            self._stmts = (up, tomb, ins(_T).on_conflict_do_nothing())
        return self._stmts

    def _upsert(self, entries: Sequence[Entry], now: float, *, check_floor: bool) -> list[str]:
        if not entries:
            return []
        engine = self.engine
        upsert, _, tag_insert = self._statements(engine)
        # one row per key, the newest (a batch may name a key twice)
        newest: dict[str, Entry] = {}
        for e in entries:
            cur = newest.get(e.key)
            if cur is None or cur.version <= e.version:
                newest[e.key] = e

        def attempt() -> list[str]:
            with self._guard(), engine.begin() as conn:
                floor = self._floor(conn, lock=True) if check_floor else 0
                # rows in key order: overlapping batches lock rows in one order, never deadlock
                rows = [self._row(newest[k], now) for k in sorted(newest) if not floor or newest[k].version > floor]
                if not rows:
                    return []
                # the entry rows first: concurrent writers of a key queue on its row
                # lock before touching its tags, so they never deadlock on the tags
                written = {r[0] for r in conn.execute(upsert, rows)}
                if not written:
                    return []
                keys = [r["key"] for r in rows if r["key"] in written]
                for i in range(0, len(keys), _BATCH):
                    conn.execute(delete(_T).where(_T.c.key.in_(keys[i : i + _BATCH])))
                tags = [{"key": k, "tag": t} for k in keys for t in dict.fromkeys(newest[k].tags)]
                if tags:
                    conn.execute(tag_insert, tags)
                self._vectors_write(conn, [newest[k] for k in keys])
                self._log(conn, [{"key": k, "version": newest[k].version, "op": "s"} for k in keys])
            return keys

        return self._retry(attempt)

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Run one transaction, again (up to 3 times) when it lost to a concurrent one
        (a deadlock or serialisation failure), so such a loss is never the caller's."""
        for n in range(3):
            try:
                return attempt()
            except SQLAlchemyError as exc:
                sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
                if n < 2 and sqlstate.startswith("40"):
                    continue
                raise self._translate(exc) from exc
        raise AssertionError("unreachable")

    def _log(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Append change-log rows, last in the transaction. On PostgreSQL rows may
        commit out of ``seq`` order; followers wait for the numbers they skipped
        (:mod:`semcache.replicas`)."""
        if not rows:
            return
        at = time_now()
        conn.execute(insert(_L), [{**r, "at": at} for r in rows])

    def _floor(self, conn: Any, *, lock: bool = False) -> int:
        """The flush floor. With ``lock`` (a replayed write's transaction), its row is
        made if missing and held with a share lock until the transaction ends: a flush,
        which updates that row, then waits for the replay to commit, so its delete sees
        the replayed row (and removes it); or the replay waits for the flush to commit
        and reads its floor (and refuses the write). Without the lock a replay that read
        the floor before a concurrent flush committed could commit its older row after
        the flush's delete had looked, and a flushed entry came back."""
        if lock:
            conn.execute(dialect_insert(self.engine)(_M).values(name=FLOOR, value=0).on_conflict_do_nothing())
            q = select(_M.c.value).where(_M.c.name == FLOOR).with_for_update(read=True)
            return int(conn.execute(q).scalar() or 0)
        v = conn.execute(select(_M.c.value).where(_M.c.name == FLOOR)).scalar()
        return int(v or 0)

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
                rows = conn.execute(
                    _E.update()
                    .where(_E.c.key == key)
                    .values(embedding=embedding, embedder_id=embedder_id, dim=len(embedding) // 4)
                    .returning(*_COLS_NO_EMB, _E.c.deleted)
                ).all()
                if rows and not rows[0]._mapping["deleted"]:
                    entry = dataclasses.replace(_row_to_entry(rows[0]), embedding=embedding, embedder_id=embedder_id)
                    self._vectors_write(conn, [entry])
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def delete(self, keys: Sequence[str], version: int | None = None) -> int:
        """Delete entries by key; return how many live ones went.

        With ``version``, each key becomes a tombstone of that version (unless it holds
        a newer one), logged for other replicas; without, rows are removed outright
        (an unreadable row).
        """
        if not keys:
            return 0
        engine = self.engine

        def attempt() -> int:
            n = 0
            with self._guard(), engine.begin() as conn:
                ordered = sorted(set(keys))
                done: list[str] = []
                for i in range(0, len(ordered), _BATCH):
                    chunk = ordered[i : i + _BATCH]
                    if version is None:
                        conn.execute(delete(_T).where(_T.c.key.in_(chunk)))
                        n += conn.execute(delete(_E).where(_E.c.key.in_(chunk))).rowcount or 0
                        continue
                    live, tombstoned = self._tombstone(conn, engine, chunk, version, time_now())
                    n += live
                    done += tombstoned
                if version is not None:
                    # logged once, last: the log's transaction lock is taken after every row lock
                    self._log(conn, [{"key": k, "version": version, "op": "d"} for k in done])
            return n

        return self._retry(attempt)

    def _tombstone(self, conn: Any, engine: Engine, keys: list[str], version: int, now: float) -> tuple[int, list[str]]:
        live = conn.execute(
            select(func.count()).select_from(_E).where(_E.c.key.in_(keys), _E.c.deleted.is_(False), _E.c.version < version)
        ).scalar_one()
        _, tomb, _ = self._statements(engine)
        fields = {**_TOMB_FIELDS, "created_at": now}
        done = [r[0] for r in conn.execute(tomb, [{"key": k, "version": version, **fields} for k in keys])]
        if done:
            conn.execute(delete(_T).where(_T.c.key.in_(done)))
            self._vectors_delete(conn, done)
        return int(live), done

    def _where(self, selector: Selector, now: float) -> list[Any]:
        conds: list[Any] = [_E.c.deleted.is_(False)]
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

    def select_keys(self, selector: Selector, now: float, below: int | None = None) -> list[str]:
        """Keys of the entries ``selector`` matches (live or expired; with ``below``,
        only those of an older version), without deleting."""
        if selector.is_empty():
            return []
        if len(selector.keys) > _BATCH:
            # bind-parameter limits: look the keys up in chunks
            out: list[str] = []
            for i in range(0, len(selector.keys), _BATCH):
                out += self.select_keys(dataclasses.replace(selector, keys=selector.keys[i : i + _BATCH]), now, below)
            return out
        try:
            conds = self._where(selector, now)
            if below is not None:
                conds.append(_E.c.version < below)
            with self._guard(), self.engine.connect() as conn:
                if selector.prompt_pattern is None:
                    q = select(_E.c.key).where(*conds)
                    return [r[0] for r in conn.execute(q)]
                q = select(*_COLS_NO_EMB).where(*conds)
                return [r._mapping["key"] for r in conn.execute(q) if selector.matches(_row_to_entry(r), now)]
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc

    def invalidate(self, selector: Selector, now: float, version: int | None = None) -> list[str]:
        """Delete every entry ``selector`` matches (tombstones with ``version``); return
        their keys. A flush with a version also raises the floor: no write older than it
        is taken again."""
        if selector.all and version is not None:
            return self._flush(now, version)
        keys = self.select_keys(selector, now, version)
        if keys:
            self.delete(keys, version)
        return keys

    def _flush(self, now: float, version: int) -> list[str]:
        engine = self.engine
        try:
            with self._guard(), engine.begin() as conn:
                # the floor rises (never falls) in one statement, which waits for a
                # replay holding the floor's row (see _floor); what it deletes is read after
                up = dialect_insert(engine)(_M).values(name=FLOOR, value=version)
                conn.execute(up.on_conflict_do_update(index_elements=[_M.c.name], set_={"value": version}, where=_M.c.value < version))
                keys = [r[0] for r in conn.execute(select(_E.c.key).where(_E.c.deleted.is_(False), _E.c.version < version))]
                # live rows older than the flush go, with their tags (cascade); a newer
                # write that committed meanwhile keeps its row and tags; tombstones stay
                # (they refuse replays until swept)
                conn.execute(delete(_E).where(_E.c.deleted.is_(False), _E.c.version < version))
                self._log(conn, [{"key": None, "version": version, "op": "f"}])
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return keys

    def sweep(self, now: float) -> list[str]:
        """Delete expired rows, old tombstones and old log rows; return the expired keys
        (so the index can drop them too)."""
        tomb_before = time_now() - self.tombstone_retention_seconds
        log_before = time_now() - self.log_retention_seconds
        try:
            with self._guard(), self.engine.begin() as conn:
                # one statement, re-checking expiry row by row: a key set again meanwhile
                # (by another replica) is not expired any more and stays (tags cascade)
                keys = [
                    r[0]
                    for r in conn.execute(
                        delete(_E).where(_E.c.deleted.is_(False), _E.c.expires_at <= now).returning(_E.c.key)
                    )
                ]
                conn.execute(delete(_E).where(_E.c.deleted.is_(True), _E.c.created_at < tomb_before))
                conn.execute(delete(_L).where(_L.c.at < log_before))
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
                            # ``|| ''``: keeps SQLite off the (embedder_id, scope) index, which
                            # made every page sort all remaining rows (O(n) a page: minutes at
                            # 1M); the primary key walks the pages in order
                            _E.c.embedder_id.concat("") == embedder_id,
                            _E.c.embedding.is_not(None),
                            _E.c.deleted.is_(False),
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

    def get_embeddings(self, keys: Sequence[str], embedder_id: str, now: float) -> list[tuple[str, str, bytes]]:
        """``(key, scope, embedding)`` of the live entries among ``keys`` embedded by ``embedder_id``."""
        out: list[tuple[str, str, bytes]] = []
        try:
            with self._guard(), self.engine.connect() as conn:
                for i in range(0, len(keys), _BATCH):
                    rows = conn.execute(
                        select(_E.c.key, _E.c.scope, _E.c.embedding).where(
                            _E.c.key.in_(list(keys[i : i + _BATCH])),
                            _E.c.embedder_id == embedder_id,
                            _E.c.embedding.is_not(None),
                            _live(now),
                        )
                    )
                    out.extend((r[0], r[1], bytes(r[2])) for r in rows)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from exc
        return out

    def count(self, now: float | None = None, embedder_id: str | None = None) -> int:
        """Number of rows (live ones only when ``now`` is given)."""
        q = select(func.count()).select_from(_E).where(_E.c.deleted.is_(False))
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
        """Whether the database answers (and, for a SQLite file, is not damaged).

        Raises:
            BackendFailed: the SQLite file is damaged.
            BackendUnavailable: the database cannot be reached.
        """
        try:
            with self._guard(), self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            # the file check reads the whole file: at most once a minute (health is polled)
            import time

            if time.monotonic() - self._checked_at >= 60.0 or self._damaged:
                self._quick_check(self.engine)
                self._checked_at = time.monotonic()
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
