"""Run the Alembic migrations from code (the app's lifespan, the CLI, tests).

The options that decide how Alembic compares and renders the schema live here too, so
env.py, the autogenerate script and the models-vs-migrations test use exactly the same ones.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.command import downgrade, upgrade
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Index, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex

import task_service

from .base import UTCDateTime
from .health import schema_revision
from .v1 import V1Defaults, convert, is_v1_sync, looks_like_v1

# Held (per transaction) while migrating, so concurrent `migrate` runs take turns.
MIGRATION_LOCK_KEY = 0x7A5C_0003


class V1DatabaseError(Exception):
    """The database holds the v1 service's tables and this path does not convert them."""


PACKAGE_DIR = Path(task_service.__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """An Alembic Config for the installed package's migrations against `database_url`.

    It uses the alembic.ini shipped beside the package when present, and leaves the
    caller's logging configuration alone.
    """
    ini = PACKAGE_DIR / "alembic.ini"
    cfg = Config(str(ini) if ini.is_file() else None)
    cfg.set_main_option("script_location", str(PACKAGE_DIR / "alembic"))
    # ConfigParser interpolates "%": a password may contain one.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


class SchemaState(StrEnum):
    CURRENT = "current"  # at the head revision
    BEHIND = "behind"  # an older revision: `task-service migrate` upgrades it
    EMPTY = "empty"  # no tables of ours
    V1 = "v1"  # the v1 REST service's tables: `task-service migrate` converts them
    UNKNOWN = "unknown"  # a revision this version does not know (a newer release's)


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    revision: str | None
    head: str

    def problem(self) -> str | None:
        """What is wrong, in words that name the fix; None when the schema is current."""
        if self.state is SchemaState.CURRENT:
            return None
        if self.state is SchemaState.V1:
            return (
                "the database holds the v1 service's tables: back it up (deploy/backup.sh), then run "
                "`task-service migrate` to convert it"
            )
        if self.state is SchemaState.UNKNOWN:
            return (
                f"the database is at revision {self.revision}, which this version ({self.head}) does not "
                "know: it was migrated by a newer release; run that release"
            )
        where = "has no tables yet" if self.state is SchemaState.EMPTY else f"is at revision {self.revision}"
        return f"the database {where}, this version needs {self.head}: run `task-service migrate`"


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the package ships no migrations"
    return head


def _known_revisions() -> set[str]:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {script.revision for script in scripts.walk_revisions()}


async def inspect_schema(database_url: str, *, connect_timeout: float = 10) -> SchemaStatus:
    """Where the database stands against this version's migrations. Raises what connecting
    raises (OSError, DBAPIError) when the database cannot be reached."""
    connect_args = {} if database_url.startswith("sqlite") else {"timeout": connect_timeout}
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with AsyncSession(engine) as session:
            revision = await schema_revision(session)
            v1 = revision is None and await looks_like_v1(session)
    finally:
        await engine.dispose()
    head = head_revision()
    if revision == head:
        state = SchemaState.CURRENT
    elif revision is None:
        state = SchemaState.V1 if v1 else SchemaState.EMPTY
    elif revision in _known_revisions():
        state = SchemaState.BEHIND
    else:
        state = SchemaState.UNKNOWN
    return SchemaStatus(state, revision, head)


async def upgrade_to_head(database_url: str) -> None:
    """Migrate the database to the latest revision; raises whatever the migration raises.

    A v1 database is not converted here (that is `migrate`, with its report)."""
    await migrate(database_url, convert_v1=False)


async def migrate(
    database_url: str, *, revision: str = "head", convert_v1: bool = True, v1_defaults: V1Defaults | None = None
) -> list[str]:
    """Upgrade the database to `revision`; returns the report of a v1 conversion, if any.

    On PostgreSQL everything runs in one transaction holding an advisory lock, so replicas
    migrating at once take turns (the later ones find the work done), and a failure leaves
    the database as it was. A database holding the v1 service's tables is converted in that
    same transaction (db/v1.py) when `convert_v1`, else refused with V1DatabaseError.
    On SQLite Alembic runs in a worker thread (its env.py runs its own event loop).
    """
    if database_url.startswith("sqlite"):
        await asyncio.to_thread(upgrade, alembic_config(database_url), revision)
        return []
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            report = await connection.run_sync(
                _migrate_locked, database_url, revision, convert_v1, v1_defaults or V1Defaults()
            )
            await connection.commit()
    finally:
        await engine.dispose()
    return report


def _migrate_locked(
    connection: Connection, database_url: str, revision: str, convert_v1: bool, v1_defaults: V1Defaults
) -> list[str]:
    connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    config = alembic_config(database_url)
    config.attributes["connection"] = connection
    report: list[str] = []
    if is_v1_sync(connection):
        if not convert_v1:
            raise V1DatabaseError(SchemaStatus(SchemaState.V1, None, head_revision()).problem() or "")
        report = convert(connection, lambda target: upgrade(config, target), v1_defaults)
    upgrade(config, revision)
    return report


async def downgrade_to_base(database_url: str) -> None:
    """Undo every migration, dropping all of the service's tables (keeps alembic_version)."""
    await asyncio.to_thread(downgrade, alembic_config(database_url), "base")


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render our column types as plain SQLAlchemy types: migrations never import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def context_options(dialect_name: str, connection: Connection | None = None) -> dict[str, Any]:
    """The MigrationContext options of env.py: how the schema is compared and rendered.

    Pass the connection when comparing (autogenerate, the models-vs-migrations test).
    """
    options: dict[str, Any] = {
        "compare_type": True,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "render_item": render_item,
    }
    if connection is not None and dialect_name == "sqlite":
        options["include_object"] = _sqlite_index_filter(connection)
    return options


def _sqlite_index_filter(connection: Connection) -> Any:
    """SQLite does not reflect DESC columns or expressions in indexes, so Alembic reports
    ix_tasks_claim_order (`priority DESC`) as changed on every comparison. SQLite keeps
    each index's CREATE statement: when it equals what the model compiles to, the index
    is unchanged. Any other difference is still reported."""

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ != "index" or reflected or compare_to is None or not isinstance(obj, Index):
            return True
        stored = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).scalar()
        expected = str(CreateIndex(obj).compile(dialect=connection.dialect))
        return _squash(stored or "") != _squash(expected)

    return include_object


def _squash(sql: str) -> str:
    return " ".join(sql.split())
