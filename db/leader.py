"""The reaper's leader election on PostgreSQL: a session-level advisory lock held on one
connection for as long as that connection lives."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

LEADER_LOCK_KEY = 0x7A5C_0002


async def try_lead(conn: AsyncConnection) -> bool:
    """Take the leader lock on `conn` unless another connection holds it; never waits."""
    got = await conn.scalar(select(func.pg_try_advisory_lock(LEADER_LOCK_KEY)))
    await conn.commit()
    return bool(got)


async def still_connected(conn: AsyncConnection) -> None:
    """A round trip on the leader's connection; raises when it is gone (and the lock with it)."""
    await conn.scalar(select(1))
    await conn.commit()
