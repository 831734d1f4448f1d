"""Run the Alembic migrations from code (the app's lifespan, the CLI, tests).

The options that decide how Alembic compares and renders the schema live here too, so
env.py, the autogenerate script and the models-vs-migrations test use exactly the same ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.command import downgrade, upgrade
from alembic.config import Config
from sqlalchemy import Index
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex

import task_service

from .base import UTCDateTime

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


async def upgrade_to_head(database_url: str) -> None:
    """Migrate the database to the latest revision; raises whatever the migration raises.

    Alembic's env.py runs its own event loop, so the command runs in a worker thread and
    this coroutine can be awaited from a running loop (the app's lifespan).
    """
    await asyncio.to_thread(upgrade, alembic_config(database_url), "head")


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
