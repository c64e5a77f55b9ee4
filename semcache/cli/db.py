"""``semcache db upgrade`` / ``db current``: the Alembic schema of L3."""

from __future__ import annotations

import click

from .options import json_option, pass_ctx, target_options
from .output import CliError, UnreachableError, echo_json, kv, one_line, translate
from .targets import CliContext, require_database

__all__ = ["db"]


@click.group()
def db() -> None:
    """Database schema: upgrade to this version's revision, or show the current one."""


db_url_option = click.option(
    "--url",
    default=None,
    help="SQLAlchemy URL (default: --sql-url / SEMCACHE_SQL_URL / sqlite:///semcache.db).",
)


def _sql_url(ctx: CliContext, url: str | None) -> str:
    if url:
        return url
    cfg = ctx.cache_config()
    if cfg.sql is None:
        raise CliError("no SQL database configured (SEMCACHE_SQL_URL=none)")
    return cfg.sql.url


@db.command("upgrade")
@target_options(envvars=False)
@db_url_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@json_option
@pass_ctx
def db_upgrade(ctx: CliContext, url: str | None, revision: str, as_json: bool) -> None:
    """Create or migrate the schema (Alembic) up to REVISION."""
    from ..config import redact_url
    from ..db.migrate import upgrade

    sql_url = _sql_url(ctx, url)
    try:
        before = _revision_now(sql_url)
        reached = upgrade(sql_url, revision)
    except Exception as exc:  # alembic and drivers raise many types; the user needs one line
        translated = translate(exc)
        raise (
            translated if translated is not None else CliError(f"upgrade failed: {one_line(exc)}")
        ) from exc
    vectors = _vector_index_state(sql_url)
    where = redact_url(sql_url)
    if as_json:
        echo_json(
            {
                "url": where,
                "revision": reached,
                "previous": before,
                "changed": before != reached,
                **({"vector_index": vectors} if vectors else {}),
            }
        )
    else:
        if before == reached:
            click.echo(f"{where}: already at revision {reached}, nothing to do")
        else:
            start = "an empty database" if before is None else f"revision {before}"
            click.echo(f"{where}: upgraded from {start} to revision {reached}")
        if vectors == "pgvector":
            click.echo("vector index: pgvector (semcache_vectors, HNSW), shared by every replica")
        elif vectors:
            click.echo(
                "vector index: in process (FAISS); this PostgreSQL "
                + ("has no pgvector extension" if vectors == "missing" else "has pgvector, but this role may not create it: "
                   "run `CREATE EXTENSION vector;` as a superuser, then `semcache db upgrade` again")
            )


def _revision_now(url: str) -> str | None:
    """The revision before an upgrade (``None``: a new or unmigrated database)."""
    from sqlalchemy.engine import make_url

    from ..db.migrate import current_revision
    from ..tiers.sql import make_engine

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(str(u.database)).exists():
            return None  # do not create the file here: the upgrade does, or says why not
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def _vector_index_state(url: str) -> str | None:
    """On PostgreSQL: ``pgvector`` when the shared index is there, else the extension's
    state (``available`` or ``missing``); ``None`` elsewhere or when it cannot be read."""
    if not url.startswith("postgresql"):
        return None
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from ..db.vectors import extension_state, has_vector_table

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return "pgvector" if has_vector_table(conn) else extension_state(conn)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


@db.command("current")
@target_options(envvars=False)
@db_url_option
@json_option
@pass_ctx
def db_current(ctx: CliContext, url: str | None, as_json: bool) -> None:
    """Show the schema revision of the database and whether it needs an upgrade."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..config import redact_url
    from ..db.migrate import current_revision, head_revision
    from ..tiers.sql import make_engine

    sql_url = _sql_url(ctx, url)
    require_database(sql_url)
    engine = make_engine(sql_url)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise UnreachableError(f"cannot read {redact_url(sql_url)}: {one_line(cause)}") from exc
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        status = "up to date"
    elif current is None:
        status = "empty: run `semcache db upgrade`"
    else:
        status = "needs `semcache db upgrade`"
    if as_json:
        echo_json(
            {
                "url": redact_url(sql_url),
                "current": current,
                "head": head,
                "up_to_date": current == head,
            }
        )
    else:
        kv(
            {
                "database": redact_url(sql_url),
                "current": current or "-",
                "head": head,
                "status": status,
            }
        )
