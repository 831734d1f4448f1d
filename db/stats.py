"""Counts for the dashboard, each one grouped statement, and the whole dashboard read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import counts as db_counts
from .base import utcnow
from .enums import TaskStatus
from .events import list_events
from .models import Agent, Project, TaskEvent
from .projects import require_project

RECENT_EVENTS = 50


@dataclass(frozen=True)
class DashboardCounts:
    """The numbers behind dashboardStats (schema/stats.py builds the GraphQL type from it)."""

    tasks: dict[str, int]
    agents: dict[str, int]
    projects: dict[str, int]
    deleted: dict[str, Any]
    recent: list[TaskEvent]
    generated_at: datetime


async def dashboard_counts(session: AsyncSession, project_id: int | None) -> DashboardCounts:
    """All of the dashboard's numbers and its newest events (NotFound for an unknown project)."""
    if project_id is not None:
        await require_project(session, project_id)
    tasks, deleted_tasks = await task_counts(session, project_id)
    return DashboardCounts(
        tasks=tasks,
        agents=await agent_counts(session),
        projects=await project_counts(session),
        deleted=await deleted_counts(session, deleted_tasks),
        recent=list(await list_events(session, project_id=project_id, limit=RECENT_EVENTS, newest_first=True)),
        generated_at=utcnow(),
    )


async def task_counts(session: AsyncSession, project_id: int | None) -> tuple[dict[str, int], int]:
    """Live tasks by status, "ready" and "total", and the soft-deleted tasks, from the counts the
    triggers keep (db/counts.py): no scan of tasks however many there are."""
    per_project = await db_counts.bucket_counts(session, None if project_id is None else [project_id])
    buckets = db_counts.summed(per_project)
    counts = db_counts.live_status_counts(buckets)
    counts["ready"] = buckets.get(db_counts.READY, 0) + await db_counts.scheduled_due(session, utcnow(), project_id)
    counts["total"] = sum(counts[s.value] for s in TaskStatus)
    return counts, buckets.get(db_counts.DELETED, 0)


async def agent_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Agent.status, func.count()).where(Agent.deleted_at.is_(None)).group_by(Agent.status)
    )
    counts = {"ONLINE": 0, "BUSY": 0, "OFFLINE": 0}
    for status, count in rows:
        counts[status] = count
    return counts


async def project_counts(session: AsyncSession) -> dict[str, int]:
    total, active = (
        await session.execute(
            select(func.count(), func.sum(case((Project.status == "ACTIVE", 1), else_=0))).where(
                Project.deleted_at.is_(None)
            )
        )
    ).one()
    return {"total": total or 0, "active": int(active or 0)}


async def deleted_counts(session: AsyncSession, tasks: int) -> dict[str, Any]:
    return {
        "projects": await session.scalar(
            select(func.count()).select_from(Project).where(Project.deleted_at.is_not(None))
        )
        or 0,
        "tasks": tasks,
        "agents": await session.scalar(select(func.count()).select_from(Agent).where(Agent.deleted_at.is_not(None)))
        or 0,
    }
