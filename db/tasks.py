"""Tasks: create (one or a batch), read with filters and keyset pagination, update, delete."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Select, String, delete, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..errors import BadInput, LimitReached, NotFound
from .agents import active_task_count, refresh_status, require_agent
from .base import insert_ignore, rows_by_ids, utcnow
from .enums import ACTIVE_STATUSES, HELD_STATUSES, TaskEventType, TaskStatus
from .events import record_event, record_events
from .models import Agent, Project, SkillSet, Task, TaskDependency, TaskTypeDefault
from .projects import require_project


@dataclass
class NewTask:
    """A validated task to insert; `depends_on` are existing ids, `depends_on_refs` indexes
    into the same batch."""

    title: str
    task_type: str
    description: str | None = None
    priority: int | None = None
    tags: list[str] = field(default_factory=list)
    required_skills: list[str] = field(default_factory=list)
    assignee: str | None = None
    reviewer: str | None = None
    acceptance_criteria: str | None = None
    requires_review: bool = True
    parent_id: int | None = None
    depends_on: list[int] = field(default_factory=list)
    depends_on_refs: list[int] = field(default_factory=list)
    max_attempts: int | None = None
    estimated_hours: float | None = None
    timeout_minutes: int | None = None
    available_at: datetime | None = None
    due_at: datetime | None = None
    created_by: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class TaskDefaults:
    timeout_minutes: int
    max_attempts: int
    priority: int


async def type_defaults(session: AsyncSession, task_types: set[str]) -> dict[str, TaskDefaults]:
    rows = await session.scalars(select(TaskTypeDefault).where(TaskTypeDefault.task_type.in_(task_types)))
    return {r.task_type: TaskDefaults(r.timeout_minutes, r.max_attempts, r.priority) for r in rows}


async def skill_set_ids(session: AsyncSession, skill_lists: Sequence[list[str]]) -> list[int]:
    """The skill_sets row of each list of skills (created when new), in order."""
    keys = ["\n".join(sorted(set(skills))) for skills in skill_lists]
    wanted = set(keys)
    found = dict((await session.execute(select(SkillSet.key, SkillSet.id).where(SkillSet.key.in_(wanted)))).all())
    for key in wanted - found.keys():
        await insert_ignore(session, SkillSet, {"key": key, "skills": key.split("\n") if key else []})
    if wanted - found.keys():
        found = dict((await session.execute(select(SkillSet.key, SkillSet.id).where(SkillSet.key.in_(wanted)))).all())
    return [found[key] for key in keys]


async def get_task(session: AsyncSession, task_id: int) -> Task | None:
    return await session.get(Task, task_id)


async def require_task(session: AsyncSession, task_id: int, *, lock: bool = False) -> Task:
    """The live task, optionally locked FOR UPDATE, or NotFound."""
    query = select(Task).where(Task.id == task_id)
    if lock:
        query = query.with_for_update()
    task = await session.scalar(query)
    if task is None or task.deleted_at is not None:
        raise NotFound(f"task {task_id} does not exist (or is deleted); check the id")
    return task


async def task_creator(session: AsyncSession, task_id: int) -> str | None:
    """`createdBy` of the task, or NotFound when it does not exist at all. Reads only that
    column, so no row is cached unlocked in the session."""
    found = (await session.execute(select(Task.created_by).where(Task.id == task_id))).first()
    if found is None:
        raise NotFound(f"task {task_id} does not exist; check the id")
    return found[0]


async def lock_task(session: AsyncSession, task_id: int, *, skip_locked: bool = False) -> Task | None:
    """The task locked FOR UPDATE (deleted or not), or None when it no longer exists (or,
    with `skip_locked`, when another transaction holds it: no wait)."""
    return await session.scalar(select(Task).where(Task.id == task_id).with_for_update(skip_locked=skip_locked))


async def by_idempotency_keys(session: AsyncSession, project_id: int, keys: Sequence[str]) -> dict[str, Task]:
    """The project's tasks created with any of `keys`, by key, in one statement."""
    if not keys:
        return {}
    rows = await session.scalars(select(Task).where(Task.project_id == project_id, Task.idempotency_key.in_(set(keys))))
    return {row.idempotency_key: row for row in rows if row.idempotency_key is not None}


async def insert_tasks(
    session: AsyncSession,
    project_id: int,
    items: Sequence[NewTask],
    *,
    default_timeout_minutes: int,
    default_max_attempts: int,
    lease_seconds: float,
    actor: str | None,
) -> list[Task]:
    """Insert the tasks with their dependencies and CREATED events, all or nothing.

    Existing dependency and parent ids must be live tasks of the same project; refs must
    not form a cycle (checked by the caller). Pre-assigned tasks start ASSIGNED.
    """
    now = utcnow()
    defaults = await type_defaults(session, {item.task_type for item in items})
    existing_ids = {i for item in items for i in item.depends_on} | {
        item.parent_id for item in items if item.parent_id is not None
    }
    existing = await rows_by_ids(session, Task, sorted(existing_ids)) if existing_ids else {}
    for task_id in existing_ids:
        row = existing.get(task_id)
        if row is None or row.deleted_at is not None:
            raise NotFound(f"task {task_id} does not exist (or is deleted); check dependsOn and parentId")
        if row.project_id != project_id:
            raise BadInput(
                f"task {task_id} belongs to project {row.project_id}; dependencies and parents "
                f"must be in the same project ({project_id})"
            )
    assignees: dict[str, Agent] = {}
    wanted = Counter(item.assignee for item in items if item.assignee)
    for name in sorted(wanted):
        agent = assignees[name] = await require_agent(session, name, lock=True)
        # Pre-assigning is a claim made for the agent: it respects maxConcurrentTasks too.
        held = await active_task_count(session, agent.id)
        if held + wanted[name] > agent.max_concurrent_tasks:
            raise LimitReached(
                f"agent '{name}' holds {held} active tasks (maxConcurrentTasks {agent.max_concurrent_tasks}) and "
                f"cannot be assigned {wanted[name]} more; assign fewer, or leave them for claimNextTask"
            )
    skill_ids = await skill_set_ids(session, [item.required_skills for item in items])

    values: list[dict[str, Any]] = []
    for item, skill_id in zip(items, skill_ids, strict=True):
        d = defaults.get(item.task_type) or TaskDefaults(default_timeout_minutes, default_max_attempts, 5)
        # One link per distinct dependency (below), so count each once: "dependsOn: [4, 4]" waits for one.
        unmet = sum(1 for i in set(item.depends_on) if existing[i].status != TaskStatus.COMPLETED)
        holder = assignees.get(item.assignee) if item.assignee else None
        values.append(
            {
                "project_id": project_id,
                "parent_id": item.parent_id,
                "title": item.title,
                "description": item.description,
                "task_type": item.task_type,
                "status": (TaskStatus.ASSIGNED if holder else TaskStatus.PENDING).value,
                "priority": item.priority if item.priority is not None else d.priority,
                "tags": item.tags,
                "required_skills": sorted(set(item.required_skills)),
                "skill_set_id": skill_id,
                "assignee_id": holder.id if holder else None,
                "reviewer": item.reviewer,
                "acceptance_criteria": item.acceptance_criteria,
                "requires_review": item.requires_review,
                "attempt": 1 if holder else 0,
                "max_attempts": item.max_attempts or d.max_attempts,
                "unmet_dependencies": unmet + len(set(item.depends_on_refs)),
                "estimated_hours": item.estimated_hours,
                "timeout_minutes": item.timeout_minutes or d.timeout_minutes,
                "created_by": item.created_by,
                "idempotency_key": item.idempotency_key,
                "created_at": now,
                "updated_at": now,
                "available_at": item.available_at,
                "due_at": item.due_at,
                "assigned_at": now if holder else None,
                "lease_expires_at": now + timedelta(seconds=lease_seconds) if holder else None,
            }
        )
        if holder:
            holder.claimed_count += 1
    # One multi-row INSERT ... RETURNING for the batch (no unit of work per row), in input order.
    rows = list((await session.scalars(insert(Task).returning(Task, sort_by_parameter_order=True), values)).all())

    links = [
        {"task_id": row.id, "depends_on_id": dep}
        for row, item in zip(rows, items, strict=True)
        for dep in sorted(set(item.depends_on) | {rows[i].id for i in item.depends_on_refs})
    ]
    if links:
        await session.execute(insert(TaskDependency), links)
    await record_events(session, rows, TaskEventType.CREATED, actor=actor)
    for agent in assignees.values():
        await refresh_status(session, agent, now=now)
    await session.flush()
    return rows


@dataclass
class TaskCriteria:
    """Which tasks a list reads (the GraphQL TaskFilter, resolved to ids and values)."""

    project_id: int | None = None
    statuses: list[str] | None = None
    assignee_id: int | None = None
    task_type: str | None = None
    tags: list[str] | None = None
    search: str | None = None
    ready_only: bool = False
    include_deleted: bool = False
    skill_set_ids: list[int] | None = None
    active_projects_only: bool = False


def _filtered(q: TaskCriteria) -> Select[Task]:
    query = select(Task)
    if q.project_id is not None:
        query = query.where(Task.project_id == q.project_id)
    if q.statuses:
        query = query.where(Task.status.in_(q.statuses))
    if q.assignee_id is not None:
        query = query.where(Task.assignee_id == q.assignee_id)
    if q.task_type is not None:
        query = query.where(Task.task_type == q.task_type)
    if q.search:
        pattern = f"%{like_escape(q.search.lower())}%"
        query = query.where(
            or_(
                func.lower(Task.title).like(pattern, escape="\\"),
                func.lower(func.coalesce(Task.description, "")).like(pattern, escape="\\"),
            )
        )
    if q.tags:
        query = query.where(has_any_tag(q.tags))
    if q.ready_only:
        query = query.where(*ready_conditions(utcnow()))
    elif not q.include_deleted:
        query = query.where(Task.deleted_at.is_(None))
    if q.skill_set_ids is not None:
        query = query.where(Task.skill_set_id.in_(q.skill_set_ids))
    if q.active_projects_only:
        query = query.where(
            Task.project_id.in_(select(Project.id).where(Project.status == "ACTIVE", Project.deleted_at.is_(None)))
        )
    return query


class _JsonArrayHas(FunctionElement[bool]):
    """`json_array ? item`: the JSON array of strings has `item` as a whole element.

    A LIKE on the serialised array is wrong on SQLite: LIKE ignores ASCII case there and
    the stored JSON escapes non-ASCII characters, so each dialect gets its own form."""

    type = Boolean()
    name = "json_array_has"
    inherit_cache = True


@compiles(_JsonArrayHas, "postgresql")
def _json_array_has_pg(element: _JsonArrayHas, compiler: Any, **kw: Any) -> str:
    array, item = element.clauses
    return f"({compiler.process(array, **kw)} ? {compiler.process(item, **kw)})"


@compiles(_JsonArrayHas, "sqlite")
def _json_array_has_sqlite(element: _JsonArrayHas, compiler: Any, **kw: Any) -> str:
    array, item = element.clauses
    # Both parts are compiled clauses (a column and a bound parameter), never raw values.
    return (
        f"EXISTS (SELECT 1 FROM json_each({compiler.process(array, **kw)}) "  # noqa: S608
        f"WHERE json_each.value = {compiler.process(item, **kw)})"
    )


def _has_tag(tag: str) -> Any:
    return _JsonArrayHas(Task.tags, literal(tag, String()))


def has_any_tag(tags: Sequence[str]) -> Any:
    return or_(*(_has_tag(tag) for tag in tags))


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def unblocked_pending() -> list[Any]:
    """PENDING, live, every dependency done: ready, or ready once its availableAt comes."""
    return [Task.status == TaskStatus.PENDING.value, Task.unmet_dependencies == 0, Task.deleted_at.is_(None)]


def ready_conditions(now: datetime) -> list[Any]:
    return [*unblocked_pending(), or_(Task.available_at.is_(None), Task.available_at <= now)]


async def list_tasks(
    session: AsyncSession, q: TaskCriteria, *, first: int, after_id: int | None
) -> tuple[list[Task], bool, int]:
    """A page of tasks in id order after `after_id`, whether more follow, and the total."""
    query = _filtered(q)
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if after_id is not None:
        query = query.where(Task.id > after_id)
    rows = list((await session.scalars(query.order_by(Task.id).limit(first + 1))).all())
    return rows[:first], len(rows) > first, total


def claim_order() -> list[Any]:
    return [Task.priority.desc(), Task.due_at.asc().nulls_last(), Task.created_at, Task.id]


async def list_ready(session: AsyncSession, q: TaskCriteria, *, first: int) -> list[Task]:
    q.ready_only = True
    return list((await session.scalars(_filtered(q).order_by(*claim_order()).limit(first))).all())


async def children_of(session: AsyncSession, parent_ids: Sequence[int]) -> dict[int, list[Task]]:
    rows = await session.scalars(
        select(Task).where(Task.parent_id.in_(parent_ids), Task.deleted_at.is_(None)).order_by(Task.id)
    )
    grouped: dict[int, list[Task]] = {pid: [] for pid in parent_ids}
    for row in rows:
        grouped[row.parent_id].append(row)  # type: ignore[index]
    return grouped


async def update_task(session: AsyncSession, task_id: int, changes: dict[str, Any], *, actor: str | None) -> Task:
    task = await require_task(session, task_id, lock=True)
    if "required_skills" in changes:
        changes["required_skills"] = sorted(set(changes["required_skills"]))
        (task.skill_set_id,) = await skill_set_ids(session, [changes["required_skills"]])
    before = {name: _jsonable(getattr(task, name)) for name in changes}
    for name, value in changes.items():
        setattr(task, name, value)
    task.updated_at = utcnow()
    after = {name: _jsonable(getattr(task, name)) for name in changes}
    changed = {name: after[name] for name in changes if before[name] != after[name]}
    if changed:
        record_event(session, task, TaskEventType.UPDATED, actor=actor, data={"changed": changed})
    await session.flush()
    return task


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def soft_delete_task(session: AsyncSession, task_id: int, *, actor: str | None) -> Task:
    task = await require_task(session, task_id, lock=True)
    now = utcnow()
    task.deleted_at = now
    task.updated_at = now
    record_event(session, task, TaskEventType.DELETED, from_status=task.status, to_status=task.status, actor=actor)
    if task.assignee_id is not None and task.status in HELD_STATUSES:
        agent = await session.get(Agent, task.assignee_id, with_for_update=True)
        if agent is not None:
            await refresh_status(session, agent, now=now)
    await session.flush()
    return task


async def restore_task(session: AsyncSession, task_id: int, *, actor: str | None) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    if task.deleted_at is not None:
        await require_project(session, task.project_id)
        task.deleted_at = None
        task.updated_at = utcnow()
        record_event(session, task, TaskEventType.RESTORED, from_status=task.status, to_status=task.status, actor=actor)
        if task.assignee_id is not None and task.status in HELD_STATUSES:
            agent = await session.get(Agent, task.assignee_id, with_for_update=True)
            if agent is not None:
                await refresh_status(session, agent)
        await session.flush()
    return task


async def hard_delete_task(session: AsyncSession, task_id: int, *, actor: str | None) -> list[int]:
    """Delete the row and its dependency links; returns its dependents (to re-count)."""
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    dependents = list(
        await session.scalars(select(TaskDependency.task_id).where(TaskDependency.depends_on_id == task_id))
    )
    record_event(session, task, TaskEventType.DELETED, from_status=task.status, actor=actor, data={"hard": True})
    agent_id = task.assignee_id if task.status in HELD_STATUSES else None
    await session.execute(
        delete(TaskDependency).where(or_(TaskDependency.task_id == task_id, TaskDependency.depends_on_id == task_id))
    )
    await session.execute(update(Task).where(Task.parent_id == task_id).values(parent_id=None))
    await session.execute(delete(Task).where(Task.id == task_id))
    if agent_id is not None:
        agent = await session.get(Agent, agent_id, with_for_update=True)
        if agent is not None:
            await refresh_status(session, agent)
    return dependents


async def leases_due(session: AsyncSession, *, now: datetime, limit: int = 500) -> list[tuple[int, int | None]]:
    """(task id, assignee id) of active tasks whose lease ran out before `now`, unlocked:
    the caller locks each and checks again (lease_overdue)."""
    rows = await session.execute(
        select(Task.id, Task.assignee_id)
        .where(Task.status.in_(ACTIVE_STATUSES), Task.lease_expires_at < now)
        .limit(limit)
    )
    return [(task_id, agent_id) for task_id, agent_id in rows]


def lease_overdue(task: Task, now: datetime) -> bool:
    """Whether the (locked) task's lease has run out at `now`."""
    return task.status in ACTIVE_STATUSES and task.lease_expires_at is not None and task.lease_expires_at < now


def run_deadline(task: Task, default_minutes: int) -> datetime | None:
    """When a RUNNING task times out: started_at + timeoutMinutes (or the default)."""
    if task.status != TaskStatus.RUNNING or task.started_at is None or task.deleted_at is not None:
        return None
    return task.started_at + timedelta(minutes=task.timeout_minutes or default_minutes)


async def timeouts_due(session: AsyncSession, *, now: datetime, default_minutes: int) -> list[tuple[int, int | None]]:
    """(task id, assignee id) of live RUNNING tasks that ran longer than their
    timeoutMinutes (or `default_minutes`) at `now`, unlocked: the caller locks each and
    checks again (run_deadline)."""
    rows = await session.execute(
        select(Task.id, Task.assignee_id, Task.started_at, Task.timeout_minutes).where(
            Task.status == TaskStatus.RUNNING.value, Task.deleted_at.is_(None)
        )
    )
    return [
        (task_id, agent_id)
        for task_id, agent_id, started, minutes in rows
        if started is not None and started + timedelta(minutes=minutes or default_minutes) < now
    ]


async def purge_deleted(session: AsyncSession, *, older_than: datetime) -> tuple[int, list[int]]:
    """Hard-delete tasks soft-deleted before `older_than` (the reaper's retention purge).
    Returns how many, and the live tasks that depended on them (to re-count, as after a
    hard delete)."""
    ids = list(await session.scalars(select(Task.id).where(Task.deleted_at < older_than).limit(1000)))
    if not ids:
        return 0, []
    dependents = await session.scalars(
        select(TaskDependency.task_id)
        .where(TaskDependency.depends_on_id.in_(ids), TaskDependency.task_id.not_in(ids))
        .distinct()
    )
    survivors = sorted(dependents)
    await session.execute(
        delete(TaskDependency).where(or_(TaskDependency.task_id.in_(ids), TaskDependency.depends_on_id.in_(ids)))
    )
    await session.execute(update(Task).where(Task.parent_id.in_(ids)).values(parent_id=None))
    await session.execute(delete(Task).where(Task.id.in_(ids)))
    return len(ids), survivors
