"""Live task counts from task_counts (kept by triggers, migration 0003): what dashboardStats,
project progress and /metrics read instead of scanning tasks. docs/ARCHITECTURE.md, "Task
counts"."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .base import dialect_name
from .enums import TaskStatus
from .models import CLAIMABLE_LATER, Task, TaskCount

READY = "READY"  # PENDING, nothing unmet, no availableAt: claimable now
DELETED = "DELETED"  # soft-deleted, whatever its status


async def bucket_counts(session: AsyncSession, project_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
    """{project id: {bucket: count}} for the given projects (every project when None)."""
    query = select(TaskCount.project_id, TaskCount.bucket, func.sum(TaskCount.n)).group_by(
        TaskCount.project_id, TaskCount.bucket
    )
    if project_ids is not None:
        query = query.where(TaskCount.project_id.in_(project_ids))
    counts: dict[int, dict[str, int]] = {pid: {} for pid in project_ids or ()}
    for project_id, bucket, n in await session.execute(query):
        if n:
            counts.setdefault(project_id, {})[bucket] = int(n)
    return counts


def live_status_counts(buckets: dict[str, int]) -> dict[str, int]:
    """Live tasks by status from one project's (or a sum of projects') buckets."""
    counts = {s.value: buckets.get(s.value, 0) for s in TaskStatus}
    counts[TaskStatus.PENDING.value] += buckets.get(READY, 0)
    return counts


def summed(per_project: dict[int, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for buckets in per_project.values():
        for bucket, n in buckets.items():
            total[bucket] = total.get(bucket, 0) + n
    return total


async def scheduled_due(session: AsyncSession, now: datetime, project_id: int | None = None) -> int:
    """Ready tasks with an availableAt already past (read from their partial index)."""
    query = select(func.count()).select_from(Task).where(text(CLAIMABLE_LATER), Task.available_at <= now)
    if project_id is not None:
        query = query.where(Task.project_id == project_id)
    return int(await session.scalar(query) or 0)


async def compact(session: AsyncSession) -> int:
    """Fold the delta rows into one row per (project, bucket); returns the rows removed.
    Rows that concurrent writers have not committed yet are not seen and stay for the next pass."""
    if dialect_name(session) == "postgresql":
        removed = (
            await session.execute(
                text(
                    "WITH gone AS (DELETE FROM task_counts RETURNING project_id, bucket, n), "
                    "kept AS (INSERT INTO task_counts (project_id, bucket, n) "
                    "SELECT project_id, bucket, sum(n) FROM gone GROUP BY project_id, bucket "
                    "HAVING sum(n) <> 0 RETURNING 1) "
                    "SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept)"
                )
            )
        ).scalar_one()
        return int(removed)
    # SQLite has one writer at a time: read the sums, replace the rows.
    rows = (
        await session.execute(
            select(TaskCount.project_id, TaskCount.bucket, func.sum(TaskCount.n)).group_by(
                TaskCount.project_id, TaskCount.bucket
            )
        )
    ).all()
    before = int(await session.scalar(select(func.count()).select_from(TaskCount)) or 0)
    await session.execute(delete(TaskCount))
    kept = [{"project_id": p, "bucket": b, "n": n} for p, b, n in rows if n]
    if kept:
        await session.execute(insert(TaskCount), kept)
    return before - len(kept)
