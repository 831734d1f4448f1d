"""The PostgreSQL pool keeps its connections: a burst of DB_POOL_SIZE concurrent requests
opens them once, and the next burst reuses them instead of connecting again (each new
connection costs a backend fork, authentication and prepared statements)."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from task_service.db.session import create_engine
from task_service.settings import Settings
from tests.conftest import make_settings


async def _burst(engine: object, width: int) -> set[int]:
    """`width` sessions at once, each holding its connection until all have one; the
    backend pids they got."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    assert isinstance(engine, AsyncEngine)
    gate = asyncio.Barrier(width)

    async def one() -> int:
        async with engine.connect() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await asyncio.wait_for(gate.wait(), 30)
            return pid

    return set(await asyncio.gather(*(one() for _ in range(width))))


async def test_default_pool_keeps_a_burst_of_connections_open(pg_url: str) -> None:
    settings: Settings = make_settings(pg_url)
    width = settings.db_pool_size
    assert width >= 20  # the concurrency of the benchmarks (wrk, 20 connections)
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pre_ping=settings.db_pool_pre_ping,
    )
    try:
        first = await _burst(engine, width)
        second = await _burst(engine, width)
        assert len(first) == width
        assert second == first  # the same backends: nothing was closed and reopened
    finally:
        await engine.dispose()


async def test_reads_run_outside_a_transaction_block(pg_url: str) -> None:
    """Services.read() on PostgreSQL: each statement commits on its own (no BEGIN/ROLLBACK
    round trips around a one-statement read), and read-only semantics stay those of READ
    COMMITTED, where every statement takes its own snapshot anyway."""
    from task_service.services import Services

    services = Services.build(make_settings(pg_url))
    try:
        async with services.read() as session:
            first = (await session.execute(text("SELECT now(), txid_current_if_assigned()"))).one()
            await session.execute(text("SELECT pg_sleep(0.01)"))
            second = (await session.execute(text("SELECT now()"))).scalar_one()
        # In a transaction block now() is the block's start and would not move.
        assert second > first[0]
    finally:
        await services.engine.dispose()


class TestPingAfterIdle:
    """DB_POOL_PRE_PING checks only connections that sat idle (db/session.py): a dead one is
    replaced without an error, and one reused right away costs no ping."""

    async def test_an_idle_connection_whose_backend_died_is_replaced(self, pg_url: str, monkeypatch) -> None:
        import asyncpg

        from task_service.db import session as db_session

        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.2)
        engine = create_engine(pg_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                victim = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim)
            finally:
                await admin.close()
            await asyncio.sleep(0.5)
            async with engine.connect() as conn:  # would raise without the ping
                now = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            assert now != victim
        finally:
            await engine.dispose()

    async def test_only_connections_idle_long_enough_are_pinged(self, pg_url: str, monkeypatch) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

        from task_service.db import session as db_session

        pings: list[int] = []
        real_ping = AsyncAdapt_asyncpg_connection.ping

        def counting_ping(self: Any) -> Any:
            pings.append(1)
            return real_ping(self)

        monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting_ping)
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.3)
        engine = create_engine(pg_url, pool_size=1)
        try:
            for _ in range(5):  # back in use right away: no ping
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert pings == []
            await asyncio.sleep(0.6)
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            assert pings == [1]
        finally:
            await engine.dispose()


class TestSqliteReads:
    async def test_a_read_left_open_does_not_stall_a_write(self, sqlite_url: str) -> None:
        """Services.read() on SQLite begins DEFERRED: a read session still open (here around
        the write; elsewhere a slow or leaked one) neither blocks the writer nor is blocked.
        With BEGIN IMMEDIATE for reads the write below waited for the busy timeout (30 s)
        and failed with "database is locked"."""
        from task_service.services import Services

        services = Services.build(make_settings(sqlite_url))
        try:
            async with services.read() as reader:
                before = (await reader.execute(text("SELECT count(*) FROM projects"))).scalar_one()

                async def write() -> None:
                    async with services.transaction() as session:
                        await session.execute(
                            text(
                                "INSERT INTO projects (name, status, created_at, updated_at) "
                                "VALUES ('r', 'ACTIVE', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                            )
                        )

                await asyncio.wait_for(write(), timeout=20)
                # The open read keeps its snapshot.
                assert (await reader.execute(text("SELECT count(*) FROM projects"))).scalar_one() == before
            async with services.read() as reader:
                assert (await reader.execute(text("SELECT count(*) FROM projects"))).scalar_one() == before + 1
        finally:
            await services.close()
