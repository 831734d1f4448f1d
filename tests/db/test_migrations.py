"""The Alembic migrations build exactly the schema of the models, on PostgreSQL and SQLite."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Index, MetaData, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from task_service.db import models
from task_service.db.base import Base
from task_service.db.migrate import alembic_config, context_options, downgrade_to_base, upgrade_to_head
from tests.conftest import Client

ADMIN_URL = os.environ.get("TASK_SERVICE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    try:
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is unreachable at {ADMIN_URL} ({exc}); start it and rerun")
    name = "tsmig_" + secrets.token_hex(6)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + ("/" + name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run_on(url: str, fn: Any) -> Any:
    """Run a synchronous fn(connection) against the database and return its result."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def schema_diff(metadata: MetaData) -> Any:
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts=context_options(conn.dialect.name, conn) | {"target_metadata": metadata}
        )
        return compare_metadata(context, metadata)

    return diff


def table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def index_definition(conn: Connection, name: str) -> str:
    if conn.dialect.name == "sqlite":
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
    return str(conn.execute(text(query), {"name": name}).scalar_one())


def metadata_with_changed_claim_order_index() -> MetaData:
    """The models' metadata, except that ix_tasks_claim_order sorts priority ascending."""
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    tasks = metadata.tables["tasks"]
    (claim_order,) = (ix for ix in tasks.indexes if ix.name == "ix_tasks_claim_order")
    tasks.indexes.discard(claim_order)
    where = text("status = 'PENDING' AND unmet_dependencies = 0 AND deleted_at IS NULL")
    Index(
        "ix_tasks_claim_order",
        tasks.c.skill_set_id,
        text("priority"),
        tasks.c.due_at,
        tasks.c.created_at,
        tasks.c.id,
        postgresql_where=where,
        sqlite_where=where,
    )
    return metadata


class TestMigrations:
    async def test_upgrade_builds_exactly_the_models_schema(self, empty_database: str) -> None:
        await upgrade_to_head(empty_database)

        assert await run_on(empty_database, schema_diff(Base.metadata)) == []

    async def test_comparison_reports_a_changed_index(self, empty_database: str) -> None:
        # The SQLite index filter in context_options must not hide real differences.
        await upgrade_to_head(empty_database)

        diff = await run_on(empty_database, schema_diff(metadata_with_changed_claim_order_index()))

        assert [(op, ix.name) for op, ix in diff] == [
            ("remove_index", "ix_tasks_claim_order"),
            ("add_index", "ix_tasks_claim_order"),
        ]

    async def test_partial_indexes_keep_order_and_predicate(self, empty_database: str) -> None:
        await upgrade_to_head(empty_database)

        def definitions(conn: Connection) -> dict[str, str]:
            names = ["ix_tasks_claim_order", "ix_tasks_claim_project", "ix_task_events_unsequenced"]
            return {name: index_definition(conn, name) for name in names}

        found = await run_on(empty_database, definitions)

        assert "priority DESC" in found["ix_tasks_claim_order"]
        assert "unmet_dependencies = 0" in found["ix_tasks_claim_order"]
        assert "project_id, skill_set_id, priority DESC" in found["ix_tasks_claim_project"]
        assert all(" WHERE " in definition for definition in found.values()), found

    async def test_upgrade_seeds_task_type_defaults(self, empty_database: str) -> None:
        await upgrade_to_head(empty_database)

        def defaults(conn: Connection) -> dict[str, tuple[int, int, int]]:
            rows = conn.execute(
                text("SELECT task_type, timeout_minutes, max_attempts, priority FROM task_type_defaults")
            )
            return {row[0]: (row[1], row[2], row[3]) for row in rows}

        seeded = await run_on(empty_database, defaults)

        assert len(seeded) == 11
        assert seeded["research"] == (120, 4, 5)
        assert seeded["review"] == (30, 3, 8)
        assert seeded == models.TASK_TYPE_DEFAULTS

    async def test_downgrade_drops_every_table_and_upgrade_rebuilds(self, empty_database: str) -> None:
        await upgrade_to_head(empty_database)

        await downgrade_to_base(empty_database)

        assert await run_on(empty_database, table_names) == {"alembic_version"}
        await upgrade_to_head(empty_database)
        assert await run_on(empty_database, table_names) == {
            "alembic_version",
            *Base.metadata.tables,
        }
        assert await run_on(empty_database, schema_diff(Base.metadata)) == []

    async def test_upgrade_again_at_head_changes_nothing(self, empty_database: str) -> None:
        await upgrade_to_head(empty_database)

        await upgrade_to_head(empty_database)

        def revision(conn: Connection) -> str:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())

        head = ScriptDirectory.from_config(alembic_config(empty_database)).get_current_head()
        assert head is not None
        assert await run_on(empty_database, revision) == head
        assert await run_on(empty_database, schema_diff(Base.metadata)) == []

    async def test_upgrade_leaves_the_callers_logging_alone(self, empty_database: str) -> None:
        app_logger = logging.getLogger("task_service.test_migrations")
        root_handlers = list(logging.getLogger().handlers)
        root_level = logging.getLogger().level

        await upgrade_to_head(empty_database)

        assert not app_logger.disabled
        assert logging.getLogger().handlers == root_handlers
        assert logging.getLogger().level == root_level


async def upgrade_to(url: str, revision: str) -> None:
    import asyncio

    from alembic import command

    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


class TestUpgradeFrom0001:
    """Databases in the field are at 0001: upgrading keeps their data."""

    async def test_projects_keep_their_rows_and_get_no_creator(self, empty_database: str, schema) -> None:  # type: ignore[no-untyped-def]
        await upgrade_to(empty_database, "0001")

        def seed(conn: Connection) -> None:
            conn.execute(
                text(
                    "INSERT INTO projects (name, status, created_at, updated_at) "
                    "VALUES ('Launch', 'ACTIVE', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            conn.commit()

        await run_on(empty_database, seed)

        await upgrade_to_head(empty_database)

        assert await run_on(empty_database, schema_diff(Base.metadata)) == []
        from task_service.services import Services
        from tests.conftest import make_settings

        services = Services.build(make_settings(empty_database))
        await services.start()
        try:
            data = await Client(schema, services).execute("{ projects { id name status createdBy } }")
            created = await Client(schema, services).execute('mutation { createProject(input: {name: "Next"}) { id } }')
        finally:
            await services.close()
        assert data == {"projects": [{"id": "1", "name": "Launch", "status": "ACTIVE", "createdBy": None}]}
        assert created == {"createProject": {"id": "2"}}
