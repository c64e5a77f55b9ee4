"""Engines for L3: connection settings per dialect, timeouts, damage checks and the
translation of driver errors into tier errors."""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..errors import BackendConflict, BackendError, BackendFailed, BackendUnavailable

__all__ = ["SQLPart", "dialect_insert", "make_engine", "quick_check", "time_now", "translate"]

#: Files up to this size are checked with ``PRAGMA quick_check`` at open.
_QUICK_CHECK_MAX_BYTES = 256 * 1024 * 1024
# SQLite result codes of a damaged file
_SQLITE_CORRUPT = (11, 26)


def make_engine(url: str, *, echo: bool = False, timeout_seconds: float = 5.0) -> Engine:
    """Create an engine with the settings semcache needs per dialect."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,  # driver errors must not carry prompts into logs
            # a write waits for SQLite's lock at most the tier's timeout
            connect_args={"timeout": timeout_seconds, "check_same_thread": False},
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
    from sqlalchemy.engine import make_url

    # options given in the URL (a search_path, say) are kept, and ours added
    given = make_url(url).query.get("options")
    given_text = " ".join(given) if isinstance(given, tuple) else (given or "")
    return create_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=timeout_seconds,
        # no call waits on a dead, restarting or unreachable server (or on a row lock)
        # much longer than the timeout; a statement runs at most 30 s (or 6 timeouts)
        connect_args={
            "connect_timeout": max(2, round(timeout_seconds)),
            "keepalives": 1,
            "keepalives_idle": max(1, round(timeout_seconds)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": round(timeout_seconds * 1000),
            "options": f"{given_text} -c lock_timeout={round(timeout_seconds * 1000)} "
            f"-c statement_timeout={round(max(30.0, 6 * timeout_seconds) * 1000)}".strip(),
        },
    )


def time_now() -> float:
    """Wall-clock time for tombstones and log rows (retention is real time, not the cache's clock)."""
    return time.time()


def dialect_insert(engine: Engine) -> Any:
    """The INSERT construct with ON CONFLICT support for this engine's dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert



def quick_check(engine: Engine) -> None:
        """A damaged SQLite file is found at open, not after writes were acknowledged."""
        if engine.dialect.name != "sqlite":
            return
        path = engine.url.database
        if not path or path == ":memory:":
            return
        try:
            size = os.path.getsize(path)
        except OSError:
            return  # a new file
        if size == 0 or size > _QUICK_CHECK_MAX_BYTES:
            return
        with engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise BackendFailed(f"the SQLite file is damaged (quick_check: {rows[0][:200] if rows else '?'})")



def translate(exc: SQLAlchemyError) -> BackendError:
    """The driver's error as a tier error: damaged file, conflict, unavailable, or failed statement."""
    from sqlalchemy.exc import DisconnectionError, OperationalError

    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if code in _SQLITE_CORRUPT or (code is not None and "malformed" in str(orig)):
        return BackendFailed(f"the SQLite file is damaged: {orig}")
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate.startswith("40"):
        # a deadlock or serialisation failure: this statement lost, the server is fine
        return BackendConflict(f"SQL transaction conflict ({sqlstate})")
    if isinstance(exc, (OperationalError, DisconnectionError)):
        return BackendUnavailable(f"SQL database is unavailable: {exc.__class__.__name__}: {exc}")
    return BackendError(f"SQL error: {exc.__class__.__name__}: {exc}")


class SQLPart:
    """What a part of :class:`~semcache.tiers.sql.SQLBackend` (its change log, its labels)
    uses of the backend it is mixed into."""

    def _guard(self) -> Any:
        raise NotImplementedError

    @property
    def engine(self) -> Engine:
        raise NotImplementedError

    def _translate(self, exc: SQLAlchemyError) -> BackendError:
        raise NotImplementedError

    def _retry(self, attempt: Any) -> Any:
        raise NotImplementedError
