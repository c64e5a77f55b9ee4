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
        reached = upgrade(sql_url, revision)
    except Exception as exc:  # alembic and drivers raise many types; the user needs one line
        translated = translate(exc)
        raise (
            translated if translated is not None else CliError(f"upgrade failed: {one_line(exc)}")
        ) from exc
    if as_json:
        echo_json({"url": redact_url(sql_url), "revision": reached})
    else:
        click.echo(f"{redact_url(sql_url)} is at revision {reached}")


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
