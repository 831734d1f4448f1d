"""The PostgreSQL pool keeps its connections: a burst of DB_POOL_SIZE concurrent requests
opens them once, and the next burst reuses them instead of connecting again (each new
connection costs a backend fork, authentication and prepared statements)."""

from __future__ import annotations

import asyncio

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
