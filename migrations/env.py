"""Alembic environment for semcache's L3 schema (works on SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from semcache.db.models import metadata
from semcache.db.vectors import VECTORS

config = context.config


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Do not even reflect the pgvector table (its column type is the extension's)."""
    return not (type_ == "table" and name == VECTORS)


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave out what lives outside the ORM metadata: the pgvector table exists only
    where the extension does (semcache.db.vectors)."""
    return not (type_ == "table" and name == VECTORS) and not (type_ == "index" and (name or "").startswith(f"ix_{VECTORS}_"))


def run_migrations_offline() -> None:
    """Emit SQL without a database connection."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        include_object=include_object,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against a live connection (an engine handed over by semcache, or a new one)."""
    engine = config.attributes.get("engine")
    own = engine is None
    if own:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=True,  # ALTER TABLE on SQLite goes through batch mode
                compare_type=True,
                include_object=include_object,
                include_name=include_name,
            )
            context.run_migrations()
    finally:
        if own:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
