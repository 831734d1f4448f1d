"""Shared fixtures: a fresh migrated PostgreSQL database (and a SQLite file) per test session,
Services against it, emptied before each test, and a GraphQL helper."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from task_service.api.schema import Schema, build_schema
from task_service.db.migrate import upgrade_to_head
from task_service.resolvers.context import Context
from task_service.services import Services
from task_service.settings import Settings

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = [
    "task_dependencies",
    "task_events",
    "idempotency_keys",
    "tasks",
    "task_counts",
    "skill_sets",
    "agents",
    "projects",
]


async def create_pg_database(prefix: str = "ts_test") -> str:
    """CREATE DATABASE with a unique name; fails loudly (never skips) without PostgreSQL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required for the tests and is not reachable at {PG_ADMIN_DSN}: {exc}. "
            "Start it (.ci/run does) or set TEST_PG_ADMIN_DSN.",
            pytrace=False,
        )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    url = await create_pg_database()
    await upgrade_to_head(url)
    yield url
    await drop_pg_database(url)


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "test.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_to_head(url)
    return url


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "retry_backoff_seconds": 0,
        "heartbeat_timeout_seconds": 60,
        "reaper_interval_seconds": 1,
    }
    values.update(overrides)
    return Settings(**values)


def with_settings(services: Services, **overrides: Any) -> Services:
    """`services` with some settings changed (on top of make_settings' defaults): the same
    engine, sessions and bus. It is not started: on PostgreSQL its writers stamp their own
    events after commit instead of waking a sequencer."""
    return dataclasses.replace(services, settings=make_settings(services.settings.database_url, **overrides))


async def empty_database(services: Services) -> None:
    async with services.sessionmaker() as session, session.begin():
        if services.is_sqlite:
            for table in TABLES:
                await session.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (fixed names)
            if await session.scalar(text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")):
                await session.execute(text("DELETE FROM sqlite_sequence"))
        else:
            await session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


async def wait_for_lock_waiter(session: Any, *, deadline: float = 10) -> None:
    """Poll until another transaction waits for `session`'s (PostgreSQL): a concurrent
    transaction of the test is blocked behind the row locks `session` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        # Who waits for a row lock waits for its holder's transaction id: this counts waits
        # for `session`'s transaction only, not other suites' on a shared server. (Not
        # pg_stat_activity: a transaction sees it as it was at its first read.)
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid' "
                "AND transactionid = pg_current_xact_id()::xid"
            )
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no concurrent transaction started waiting for the lock")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses the database (`backend`, `database_url`, `services`, `gql`) runs once
    on each backend; one marked postgres_only (on it, its class or its module) on PostgreSQL
    alone."""
    if "backend" in metafunc.fixturenames:
        only_pg = metafunc.definition.get_closest_marker("postgres_only") is not None
        metafunc.parametrize("backend", ["postgresql"] if only_pg else ["postgresql", "sqlite"])


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str) -> str:
    return request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    svc = Services.build(make_settings(database_url))
    await svc.start()
    await empty_database(svc)
    yield svc
    await svc.close()


@pytest.fixture(scope="session")
def schema() -> Schema:
    return build_schema(Settings())


class GraphQLFailure(AssertionError):
    def __init__(self, errors: list[Any]):
        self.errors = errors
        self.code = (errors[0].extensions or {}).get("code")
        super().__init__(f"{self.code}: {errors[0].message}")


class Client:
    """Runs operations through the schema, as a request would, against `services`."""

    def __init__(self, schema: Schema, services: Services):
        self.schema = schema
        self.services = services

    async def execute(self, query: str, **variables: Any) -> Any:
        result = await self.schema.execute(query, variable_values=variables, context_value=Context(self.services))
        if result.errors:
            raise GraphQLFailure(result.errors)
        return result.data

    async def error(self, query: str, **variables: Any) -> GraphQLFailure:
        """Run an operation that must fail; returns the failure (code, errors)."""
        try:
            await self.execute(query, **variables)
        except GraphQLFailure as failure:
            return failure
        raise AssertionError("the operation succeeded; an error was expected")


@pytest.fixture
def gql(schema: Schema, services: Services) -> Client:
    return Client(schema, services)
