"""Task queries and the mutations that edit tasks (the lifecycle is in resolvers/lifecycle.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import agents as db_agents
from ..db import dependencies as db_dependencies
from ..db import tasks as db_tasks
from ..db.lifecycle import matching_skill_sets
from ..errors import BadInput, CycleDetected
from ..schema import validate
from ..schema.tasks import CreateTaskInput, Task, TaskConnection, TaskFilter, UpdateTaskInput, task_connection
from .auth import Caller
from .context import Context

Info = strawberry.Info[Context, None]


@strawberry.type
class TaskQuery:
    @strawberry.field
    async def task(self, info: Info, id: strawberry.ID) -> Task | None:
        row = await info.context.loaders.task.load(validate.parse_id(id))
        return Task.from_row(row) if row is not None and row.deleted_at is None else None

    @strawberry.field
    async def tasks(
        self, info: Info, filter: TaskFilter | None = None, first: int | None = 50, after: str | None = None
    ) -> TaskConnection:
        return await task_connection(info, filter, first, after)

    @strawberry.field(description="Ready tasks in claim order; with agent: only those it may claim.")
    async def available_tasks(
        self, info: Info, agent: str | None = None, project_id: strawberry.ID | None = None, first: int | None = 50
    ) -> list[Task]:
        first = info.context.page_size(first)
        q = db_tasks.TaskCriteria(project_id=validate.optional_id(project_id, "projectId"), active_projects_only=True)
        async with info.context.services.read() as session:
            if agent is not None:
                row = await db_agents.require_agent(session, agent)
                q.skill_set_ids = await matching_skill_sets(session, row)
            rows = await db_tasks.list_ready(session, q, first=first)
        return [Task.from_row(r) for r in rows]


def _new_task(item: CreateTaskInput, index: int | None, refs: dict[str, int], caller: Caller) -> db_tasks.NewTask:
    where = "" if index is None else f"tasks[{index}]."
    if index is None and (item.ref is not None or item.depends_on_refs):
        raise BadInput("ref and dependsOnRefs are for createTasks; use dependsOn with task ids here")
    ref_deps: list[int] = []
    for ref in item.depends_on_refs or []:
        if ref not in refs:
            raise BadInput(f"{where}dependsOnRefs names '{ref}', which is not the ref of any item in this call")
        ref_deps.append(refs[ref])
    return db_tasks.NewTask(
        title=validate.title(item.title) or "",
        task_type=validate.name(item.task_type, f"{where}taskType") or "",
        description=validate.description(item.description),
        priority=validate.int_range(item.priority, f"{where}priority", 1, 10),
        tags=validate.labels(item.tags, f"{where}tags") or [],
        required_skills=validate.labels(item.required_skills, f"{where}requiredSkills") or [],
        assignee=validate.name(item.assignee, f"{where}assignee", required=False),
        reviewer=validate.name(item.reviewer, f"{where}reviewer", required=False),
        acceptance_criteria=validate.description(item.acceptance_criteria),
        requires_review=item.requires_review is not False,
        parent_id=validate.optional_id(item.parent_id, f"{where}parentId"),
        depends_on=[validate.parse_id(i, f"{where}dependsOn") for i in item.depends_on or []],
        depends_on_refs=ref_deps,
        max_attempts=validate.int_range(item.max_attempts, f"{where}maxAttempts", 1, 100),
        estimated_hours=validate.non_negative(item.estimated_hours, f"{where}estimatedHours"),
        timeout_minutes=validate.int_range(item.timeout_minutes, f"{where}timeoutMinutes", 1, 525_600),
        available_at=validate.moment(item.available_at),
        due_at=validate.moment(item.due_at),
        created_by=_creator(item.created_by, f"{where}createdBy", caller),
        idempotency_key=validate.text(item.idempotency_key, f"{where}idempotencyKey", limit=200),
    )


def _creator(named: str | None, field: str, caller: Caller) -> str | None:
    """createdBy: an agent token creates as its own agent (naming another is FORBIDDEN)."""
    if caller.is_agent:
        return caller.acting_agent(named)
    return validate.name(named, field, required=False)


async def _may_delete(session: AsyncSession, caller: Caller, task_id: int, *, hard: bool, action: str) -> None:
    if hard:
        caller.require_admin(f"{action} a task for good (hard: true)")
    if caller.is_agent:
        caller.require_creator(await db_tasks.task_creator(session, task_id), f"task {task_id}", action)


def _check_acyclic(items: list[db_tasks.NewTask]) -> None:
    """Refs within one createTasks call must form a DAG (Kahn's algorithm)."""
    waiting = {i: set(item.depends_on_refs) for i, item in enumerate(items)}
    ready = [i for i, deps in waiting.items() if not deps]
    done = 0
    dependents: dict[int, list[int]] = {}
    for i, deps in waiting.items():
        for d in deps:
            dependents.setdefault(d, []).append(i)
    while ready:
        node = ready.pop()
        done += 1
        for child in dependents.get(node, []):
            waiting[child].discard(node)
            if not waiting[child]:
                ready.append(child)
    if done != len(items):
        stuck = sorted(i for i, deps in waiting.items() if deps)
        raise CycleDetected(f"the dependsOnRefs of items {stuck} form a cycle")


def _policy_kwargs(info: Info) -> dict[str, Any]:
    s = info.context.settings
    return {
        "default_timeout_minutes": s.default_task_timeout_minutes,
        "default_max_attempts": s.default_max_attempts,
        "lease_seconds": info.context.services.policy.lease_seconds,
    }


@strawberry.type
class TaskMutation:
    @strawberry.mutation
    async def create_task(self, info: Info, input: CreateTaskInput) -> Task:
        if input.project_id is None:
            raise BadInput("projectId is required in createTask")
        project_id = validate.parse_id(input.project_id, "projectId")
        item = _new_task(input, None, {}, info.context.caller)
        async with info.context.services.transaction() as session:
            from ..db.projects import require_project

            await require_project(session, project_id)
            if item.idempotency_key:
                existing = await db_tasks.by_idempotency_keys(session, project_id, [item.idempotency_key])
                if existing:
                    return Task.from_row(existing[item.idempotency_key])
            (row,) = await db_tasks.insert_tasks(
                session, project_id, [item], actor=item.created_by, **_policy_kwargs(info)
            )
        return Task.from_row(row)

    @strawberry.mutation(description="All or nothing, in input order; refs link items of the same call.")
    async def create_tasks(self, info: Info, project_id: strawberry.ID, tasks: list[CreateTaskInput]) -> list[Task]:
        limit = info.context.settings.max_batch_size
        if len(tasks) > limit:
            raise BadInput(f"createTasks takes at most {limit} tasks per call; got {len(tasks)}")
        pid = validate.parse_id(project_id, "projectId")
        refs: dict[str, int] = {}
        for index, item in enumerate(tasks):
            if item.ref is not None:
                ref = validate.name(item.ref, f"tasks[{index}].ref")
                if ref in refs:
                    raise BadInput(f"tasks[{index}].ref '{ref}' is used twice; refs must be unique in a call")
                refs[ref or ""] = index
        items = [_new_task(item, index, refs, info.context.caller) for index, item in enumerate(tasks)]
        _check_acyclic(items)
        keys = [i.idempotency_key for i in items if i.idempotency_key]
        if len(keys) != len(set(keys)):
            raise BadInput("two items share an idempotencyKey; keys must be unique per project")
        async with info.context.services.transaction() as session:
            from ..db.projects import require_project

            await require_project(session, pid)
            found = await db_tasks.by_idempotency_keys(session, pid, keys)
            if found and len(found) == len(keys):
                return [Task.from_row(found[key]) for key in keys]
            if found:
                raise BadInput(
                    "some idempotencyKeys of this batch already exist and some do not; resend the original batch"
                )
            rows = await db_tasks.insert_tasks(session, pid, items, actor=None, **_policy_kwargs(info)) if items else []
        return [Task.from_row(r) for r in rows]

    @strawberry.mutation
    async def update_task(self, info: Info, id: strawberry.ID, input: UpdateTaskInput) -> Task:
        changes: dict[str, Any] = {}
        checks: dict[str, Callable[[Any], Any]] = {
            "title": lambda v: validate.title(v),
            "description": validate.description,
            "priority": lambda v: validate.int_range(v, "priority", 1, 10),
            "tags": lambda v: validate.labels(v, "tags") or [],
            "required_skills": lambda v: validate.labels(v, "requiredSkills") or [],
            "reviewer": lambda v: validate.name(v, "reviewer", required=False),
            "acceptance_criteria": validate.description,
            "max_attempts": lambda v: validate.int_range(v, "maxAttempts", 1, 100),
            "timeout_minutes": lambda v: validate.int_range(v, "timeoutMinutes", 1, 525_600),
            "available_at": validate.moment,
            "due_at": validate.moment,
        }
        not_null = {"title", "priority", "max_attempts"}
        for field, check in checks.items():
            value = getattr(input, field)
            if value is strawberry.UNSET:
                continue
            if value is None and field in not_null:
                raise BadInput(f"{field} cannot be null; omit it to keep the current value")
            changes[field] = check(value)
        async with info.context.services.transaction() as session:
            row = await db_tasks.update_task(session, validate.parse_id(id), changes, actor=info.context.caller.actor)
        return Task.from_row(row)

    @strawberry.mutation
    async def add_dependency(self, info: Info, task_id: strawberry.ID, depends_on: strawberry.ID) -> Task:
        async with info.context.services.transaction() as session:
            row = await db_dependencies.add_dependency(
                session,
                validate.parse_id(task_id, "taskId"),
                validate.parse_id(depends_on, "dependsOn"),
                actor=info.context.caller.actor,
            )
        return Task.from_row(row)

    @strawberry.mutation
    async def remove_dependency(self, info: Info, task_id: strawberry.ID, depends_on: strawberry.ID) -> Task:
        async with info.context.services.transaction() as session:
            row = await db_dependencies.remove_dependency(
                session,
                validate.parse_id(task_id, "taskId"),
                validate.parse_id(depends_on, "dependsOn"),
                actor=info.context.caller.actor,
            )
        return Task.from_row(row)

    @strawberry.mutation(description="Soft delete hides the task; hard: true erases it and its links.")
    async def delete_task(self, info: Info, id: strawberry.ID, hard: bool | None = False) -> bool:
        task_id = validate.parse_id(id)
        caller = info.context.caller
        actor = caller.actor
        async with info.context.services.transaction() as session:
            await _may_delete(session, caller, task_id, hard=bool(hard), action="delete")
            if hard:
                dependents = await db_tasks.hard_delete_task(session, task_id, actor=actor)
                await db_dependencies.recount_and_unblock(session, dependents, actor=actor)
            else:
                await db_tasks.soft_delete_task(session, task_id, actor=actor)
        return True

    @strawberry.mutation
    async def restore_task(self, info: Info, id: strawberry.ID) -> Task:
        task_id = validate.parse_id(id)
        async with info.context.services.transaction() as session:
            await _may_delete(session, info.context.caller, task_id, hard=False, action="restore")
            row = await db_tasks.restore_task(session, task_id, actor=info.context.caller.actor)
        return Task.from_row(row)
