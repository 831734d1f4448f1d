"""Counts for the dashboard, each one grouped statement, and the whole dashboard read."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, literal, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from . import counts as db_counts
from .base import utcnow
from .enums import AgentStatus, ProjectStatus, TaskStatus
from .events import list_events
from .models import CLAIMABLE_LATER, Agent, Project, Task, TaskCount, TaskEvent
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
    """All of the dashboard's numbers and its newest events (NotFound for an unknown project):
    two statements, the counts (no scan of tasks: db/counts.py) and the events."""
    if project_id is not None:
        await require_project(session, project_id)
    tasks, agents, projects, deleted = await counts(session, project_id)
    return DashboardCounts(
        tasks=tasks,
        agents=agents,
        projects=projects,
        deleted=deleted,
        recent=list(await list_events(session, project_id=project_id, limit=RECENT_EVENTS, newest_first=True)),
        generated_at=utcnow(),
    )


def _live_or_deleted(table: Any) -> Any:
    return case((table.deleted_at.is_(None), table.status), else_=literal(db_counts.DELETED))


@functools.cache
def _counts_query(for_project: bool) -> Any:
    """Built once (SQLAlchemy then reuses its compiled form); binds `now` and `project_id`."""
    buckets = select(literal("task").label("kind"), TaskCount.bucket.label("key"), func.sum(TaskCount.n).label("n"))
    due = (
        select(literal("due"), literal(""), func.count())
        .select_from(Task)
        .where(text(CLAIMABLE_LATER), Task.available_at <= bindparam("now", type_=Task.available_at.type))
    )
    if for_project:
        buckets = buckets.where(TaskCount.project_id == bindparam("project_id"))
        due = due.where(Task.project_id == bindparam("project_id"))
    agent_key = _live_or_deleted(Agent)
    project_key = _live_or_deleted(Project)
    return union_all(
        buckets.group_by(TaskCount.bucket),
        due,
        select(literal("agent"), agent_key, func.count()).group_by(agent_key),
        select(literal("project"), project_key, func.count()).group_by(project_key),
    )


async def counts(
    session: AsyncSession, project_id: int | None
) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, Any]]:
    """Tasks (by status, ready, total), agents, projects, and the deleted of each, in one statement."""
    params: dict[str, Any] = {"now": utcnow()}
    if project_id is not None:
        params["project_id"] = project_id
    rows = await session.execute(_counts_query(project_id is not None), params)
    found: dict[str, dict[str, int]] = {"task": {}, "due": {}, "agent": {}, "project": {}}
    for kind, key, n in rows:
        found[kind][key] = int(n or 0)
    buckets_found, agents_found, projects_found = found["task"], found["agent"], found["project"]
    tasks = db_counts.live_status_counts(buckets_found)
    tasks["ready"] = buckets_found.get(db_counts.READY, 0) + found["due"].get("", 0)
    tasks["total"] = sum(tasks[s.value] for s in TaskStatus)
    agents = {s.value: agents_found.get(s.value, 0) for s in AgentStatus}
    live_projects = {k: v for k, v in projects_found.items() if k != db_counts.DELETED}
    projects = {"total": sum(live_projects.values()), "active": live_projects.get(ProjectStatus.ACTIVE.value, 0)}
    deleted = {
        "projects": projects_found.get(db_counts.DELETED, 0),
        "tasks": buckets_found.get(db_counts.DELETED, 0),
        "agents": agents_found.get(db_counts.DELETED, 0),
    }
    return tasks, agents, projects, deleted
