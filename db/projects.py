"""Projects: create, read, update, soft and hard delete, restore."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import NotFound
from .agents import lock_agent_by_id, refresh_status
from .base import rowcount, utcnow
from .counts import bucket_counts, live_status_counts
from .enums import HELD_STATUSES, TaskEventType
from .events import record_event
from .models import Project, Task


async def get_project(session: AsyncSession, project_id: int, *, include_deleted: bool = True) -> Project | None:
    project = await session.get(Project, project_id)
    if project is None or (project.deleted_at is not None and not include_deleted):
        return None
    return project


async def require_project(session: AsyncSession, project_id: int, *, for_update: bool = False) -> Project:
    """The live project, or NotFound (a soft-deleted project counts as missing)."""
    query = select(Project).where(Project.id == project_id)
    if for_update:
        query = query.with_for_update()
    project = await session.scalar(query)
    if project is None or project.deleted_at is not None:
        raise NotFound(f"project {project_id} does not exist (or is deleted); check the id")
    return project


async def project_creator(session: AsyncSession, project_id: int) -> str | None:
    """Who created the project (None: the admin, or before creators were recorded); NotFound
    when it does not exist at all. Reads only that column, so no row is cached unlocked."""
    found = (await session.execute(select(Project.created_by).where(Project.id == project_id))).first()
    if found is None:
        raise NotFound(f"project {project_id} does not exist; check the id")
    return found[0]


async def list_projects(
    session: AsyncSession, *, status: str | None = None, include_deleted: bool = False
) -> Sequence[Project]:
    query = select(Project).order_by(Project.id)
    if status is not None:
        query = query.where(Project.status == status)
    if not include_deleted:
        query = query.where(Project.deleted_at.is_(None))
    return (await session.scalars(query)).all()


async def create_project(
    session: AsyncSession, *, name: str, description: str | None, status: str, created_by: str | None = None
) -> Project:
    project = Project(name=name, description=description, status=status, created_by=created_by)
    session.add(project)
    await session.flush()
    return project


async def update_project(session: AsyncSession, project_id: int, **changes: object) -> Project:
    project = await require_project(session, project_id, for_update=True)
    for field, value in changes.items():
        setattr(project, field, value)
    project.updated_at = utcnow()
    await session.flush()
    return project


async def soft_delete_project(session: AsyncSession, project_id: int, *, actor: str | None) -> None:
    """Hide the project and its live tasks with one timestamp, so that restoring brings back
    exactly those; each hidden task gets a DELETED event."""
    project = await require_project(session, project_id, for_update=True)
    now = utcnow()
    project.deleted_at = now
    project.updated_at = now
    await _set_tasks_deleted(session, project_id, match=None, value=now, actor=actor)


async def restore_project(session: AsyncSession, project_id: int, *, actor: str | None) -> Project:
    project = await session.scalar(select(Project).where(Project.id == project_id).with_for_update())
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    if project.deleted_at is not None:
        await _set_tasks_deleted(session, project_id, match=project.deleted_at, value=None, actor=actor)
        project.deleted_at = None
        project.updated_at = utcnow()
    await session.flush()
    return project


async def _set_tasks_deleted(
    session: AsyncSession, project_id: int, *, match: datetime | None, value: datetime | None, actor: str | None
) -> None:
    tasks = await session.scalars(
        select(Task)
        .where(Task.project_id == project_id, Task.deleted_at.is_(None) if match is None else Task.deleted_at == match)
        .with_for_update()
    )
    kind = TaskEventType.DELETED if value is not None else TaskEventType.RESTORED
    holders: set[int] = set()
    for task in tasks:
        if task.assignee_id is not None and task.status in HELD_STATUSES:
            holders.add(task.assignee_id)
        task.deleted_at = value
        task.updated_at = utcnow()
        record_event(
            session,
            task,
            kind,
            from_status=task.status,
            to_status=task.status,
            actor=actor,
            data={"withProject": str(project_id)},
        )
    await session.flush()
    # A held task that leaves (or comes back with) its project changes its agent's status,
    # as deleting (or restoring) the task alone does.
    await _refresh_holders(session, holders)


async def hard_delete_project(session: AsyncSession, project_id: int) -> None:
    """Erase the project; its tasks go with it (ON DELETE CASCADE) and the agents that
    held them get their status recomputed (a BUSY agent may now be ONLINE)."""
    holders = [
        agent_id
        for agent_id in await session.scalars(
            select(Task.assignee_id)
            .where(Task.project_id == project_id, Task.status.in_(HELD_STATUSES), Task.assignee_id.is_not(None))
            .distinct()
        )
        if agent_id is not None
    ]
    if rowcount(await session.execute(delete(Project).where(Project.id == project_id))) == 0:
        raise NotFound(f"project {project_id} does not exist")
    await _refresh_holders(session, holders)


async def _refresh_holders(session: AsyncSession, agent_ids: Sequence[int] | set[int]) -> None:
    """Recompute the status of each agent (locked in id order) that held tasks just changed."""
    for agent_id in sorted(agent_ids):
        agent = await lock_agent_by_id(session, agent_id)
        if agent is not None:
            await refresh_status(session, agent)


async def purge_deleted_projects(session: AsyncSession, *, older_than: datetime) -> int:
    """Erase projects soft-deleted before `older_than` (their tasks go with them); returns
    how many."""
    return rowcount(await session.execute(delete(Project).where(Project.deleted_at < older_than)))


async def status_counts(session: AsyncSession, project_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Live (not deleted) task counts per status for each project, from db/counts.py."""
    per_project = await bucket_counts(session, project_ids)
    return {pid: {k: v for k, v in live_status_counts(per_project.get(pid, {})).items() if v} for pid in project_ids}
