"""The database's own state: can it be reached, is it migrated (to which revision), and the
counts /metrics reads at scrape time."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from . import counts as db_counts
from .base import dialect_name, utcnow
from .enums import AgentStatus
from .models import Agent

UNREACHABLE = "database unreachable"
NOT_MIGRATED = "database not migrated"

# PostgreSQL: undefined table, undefined column, undefined function (the hot paths' functions
# come with migrations 0004 to 0006); SQLite says it in words.
_MISSING_SCHEMA_STATES = ("42P01", "42703", "42883")
_MISSING_SCHEMA_WORDS = ("no such table", "no such column")


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached right now (refused, closed, shutting down, busy
    connection): worth retrying. Other errors (bad SQL, bad data) are not."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return (
        exc.connection_invalidated
        or (isinstance(exc, InterfaceError | OperationalError) and not _missing_schema(exc))
        or sqlstate.startswith(("08", "57P"))  # connection exception, operator intervention
        or sqlstate == "53300"  # too many connections: the server is full for now
        # asyncpg, when the server shut a connection down in the middle of an operation, may
        # report it at the connection's next use as "cannot switch to state ...; another
        # operation is in progress" (seen in tests/resilience/test_database_restart.py).
        or type(exc.orig).__name__ == "InternalClientError"
    )


def _missing_schema(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate in _MISSING_SCHEMA_STATES or any(words in str(exc.orig) for words in _MISSING_SCHEMA_WORDS)


def problem(exc: BaseException) -> str | None:
    """UNREACHABLE or NOT_MIGRATED when `exc` says so; None for any other failure."""
    if unreachable(exc):
        return UNREACHABLE
    if isinstance(exc, DBAPIError) and _missing_schema(exc):
        return NOT_MIGRATED
    return None


async def schema_revision(session: AsyncSession) -> str | None:
    """The Alembic revision the database is at; None when it has no alembic_version table."""
    if dialect_name(session) == "postgresql":
        exists = await session.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    else:
        exists = await session.scalar(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")
        )
    if not exists:
        return None
    revision: str | None = await session.scalar(text("SELECT version_num FROM alembic_version"))
    return revision


async def service_counts(session: AsyncSession) -> tuple[dict[str, int], int, dict[str, int]]:
    """Live tasks by status, ready tasks, live agents by status (tasks from db/counts.py)."""
    buckets = db_counts.summed(await db_counts.bucket_counts(session))
    task_counts = db_counts.live_status_counts(buckets)
    ready_count = buckets.get(db_counts.READY, 0) + await db_counts.scheduled_due(session, utcnow())
    agent_counts = {status.value: 0 for status in AgentStatus}
    rows = await session.execute(
        select(Agent.status, func.count()).where(Agent.deleted_at.is_(None)).group_by(Agent.status)
    )
    for status, count in rows:
        agent_counts[status] = count
    return task_counts, ready_count, agent_counts
