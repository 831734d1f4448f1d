"""Alembic environment: async engine, URL from the settings unless the caller set one.

Run by `alembic ...` from a checkout and by task_service.db.migrate, which on PostgreSQL
passes its own connection (config.attributes["connection"]) and on SQLite runs this in a
worker thread, so asyncio.run here never meets the app's running loop.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from task_service.db import models  # noqa: F401  (registers every table on Base.metadata)
from task_service.db.base import Base
from task_service.db.migrate import context_options
from task_service.settings import load_settings, normalise_database_url

config = context.config

# Only the alembic command line configures logging; programmatic callers keep their own.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return normalise_database_url(url)
    return load_settings().database_url


def dialect_name(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (`alembic upgrade head --sql`)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(dialect_name(url)),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        process_revision_directives=config.attributes.get("process_revision_directives"),
        **context_options(connection.dialect.name, connection),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    # task_service.db.migrate hands over its connection, already in the transaction that
    # holds the migration lock (and, for a v1 database, the conversion): use it as it is.
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
