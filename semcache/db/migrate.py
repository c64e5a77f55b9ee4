"""Alembic, driven in code: find the revisions, upgrade, and check the schema version.

The revisions live in the repository's ``migrations/`` folder and are installed
inside the package as ``semcache/_migrations`` (hatch ``force-include``). The
packaged copy is tried first, then the checkout (editable installs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect

from ..errors import ConfigurationError, SchemaVersionError

__all__ = ["alembic_config", "current_revision", "ensure_schema", "ensure_vectors", "head_revision", "script_location", "upgrade"]


def script_location() -> Path:
    """The folder holding ``env.py`` and ``versions/``."""
    pkg = Path(__file__).resolve().parent.parent
    for candidate in (pkg / "_migrations", pkg.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError("semcache's migrations are missing from this installation; reinstall semcache")


def alembic_config(url: str, engine: Engine | None = None) -> Any:
    """An Alembic ``Config`` for ``url`` (and an open engine to reuse, if given)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    # ConfigParser interpolation: a literal % in a password must be doubled
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest revision this package ships."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(script_location()))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an unmigrated database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head", engine: Engine | None = None) -> str:
    """Apply the revisions up to ``revision``; return the revision reached."""
    from alembic import command

    cfg = alembic_config(url, engine)
    command.upgrade(cfg, revision)
    own = engine is None
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(url)
    try:
        if revision == "head":
            ensure_vectors(engine)
        return current_revision(engine) or ""
    finally:
        if own:
            engine.dispose()


def ensure_vectors(engine: Engine) -> bool:
    """On PostgreSQL, create the pgvector table if the extension has come since the
    revision ran (the revision skips it without pgvector); return whether it exists."""
    if engine.dialect.name != "postgresql":
        return False
    from .vectors import create_vector_schema, has_vector_table

    with engine.begin() as conn:
        if has_vector_table(conn):
            return True
        return create_vector_schema(conn)


def ensure_schema(engine: Engine, url: str, *, create_if_empty: bool, auto_upgrade: bool) -> None:
    """Make sure the database is at the head revision, or say what to run.

    Raises:
        SchemaVersionError: the database is older (or newer) than this package.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    if engine.dialect.name == "postgresql":
        # replicas starting together on an empty database: one migrates, the others
        # wait for it and then find the schema at head
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(74696564)"))
            try:
                _ensure(engine, url, head, current_revision(engine), create_if_empty, auto_upgrade)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(74696564)"))
                conn.commit()
        return
    _ensure(engine, url, head, current, create_if_empty, auto_upgrade)


def _ensure(engine: Engine, url: str, head: str, current: str | None, create_if_empty: bool, auto_upgrade: bool) -> None:
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if "semcache_entries" in tables:
            raise SchemaVersionError(
                "the database has semcache tables but no Alembic revision; "
                "run `semcache db upgrade` against it after checking it is a semcache database"
            )
        if create_if_empty:
            upgrade(url, "head", engine)
            return
        from ..config import redact_url

        raise SchemaVersionError(
            f"the database has no semcache schema: run `semcache db upgrade --url {redact_url(url)}`"
        )
    from alembic.script import ScriptDirectory

    known = {rev.revision for rev in ScriptDirectory(str(script_location())).walk_revisions()}
    if current not in known:
        raise SchemaVersionError(
            f"the database is at revision {current}, which this semcache does not know "
            "(newer than this package?): upgrade semcache"
        )
    if auto_upgrade:
        upgrade(url, "head", engine)
        return
    raise SchemaVersionError(
        f"the database is at schema revision {current} but this semcache needs {head}: "
        "run `semcache db upgrade` (with --url for a non-default database)"
    )
