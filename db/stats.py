"""Counts for the dashboard, each one grouped statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .base import utcnow
from .enums import TaskStatus
from .models import Agent, Project, Task
from .tasks import ready_conditions


async def task_counts(session: AsyncSession, project_id: int | None) -> dict[str, int]:
    conditions = ready_conditions(utcnow())
    query = select(
        Task.status,
        func.count(),
        func.sum(case((and_(*conditions), 1), else_=0)),
    ).where(Task.deleted_at.is_(None))
    if project_id is not None:
        query = query.where(Task.project_id == project_id)
    counts: dict[str, int] = {s.value: 0 for s in TaskStatus}
    counts["ready"] = 0
    for status, count, ready_count in await session.execute(query.group_by(Task.status)):
        counts[status] = count
        counts["ready"] += int(ready_count or 0)
    counts["total"] = sum(counts[s.value] for s in TaskStatus)
    return counts


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


async def deleted_counts(session: AsyncSession, project_id: int | None) -> dict[str, Any]:
    tasks = select(func.count()).select_from(Task).where(Task.deleted_at.is_not(None))
    if project_id is not None:
        tasks = tasks.where(Task.project_id == project_id)
    return {
        "projects": await session.scalar(
            select(func.count()).select_from(Project).where(Project.deleted_at.is_not(None))
        )
        or 0,
        "tasks": await session.scalar(tasks) or 0,
        "agents": await session.scalar(select(func.count()).select_from(Agent).where(Agent.deleted_at.is_not(None)))
        or 0,
    }
