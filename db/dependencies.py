"""Task dependencies: add and remove with cycle detection, the readiness counter, unblocking."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import BadInput, CycleDetected
from .base import rowcount
from .enums import TaskEventType, TaskStatus
from .events import record_event
from .models import Task, TaskDependency
from .projects import require_project
from .tasks import require_task


async def dependencies_of(session: AsyncSession, task_ids: Sequence[int]) -> dict[int, list[Task]]:
    """The live tasks each task depends on, in id order, in one statement."""
    rows = await session.execute(
        select(TaskDependency.task_id, Task)
        .join(Task, Task.id == TaskDependency.depends_on_id)
        .where(TaskDependency.task_id.in_(task_ids), Task.deleted_at.is_(None))
        .order_by(TaskDependency.task_id, Task.id)
    )
    grouped: dict[int, list[Task]] = {task_id: [] for task_id in task_ids}
    for task_id, task in rows:
        grouped[task_id].append(task)
    return grouped


async def dependents_of(session: AsyncSession, task_ids: Sequence[int]) -> dict[int, list[Task]]:
    """The live tasks that depend on each task, in id order, in one statement."""
    rows = await session.execute(
        select(TaskDependency.depends_on_id, Task)
        .join(Task, Task.id == TaskDependency.task_id)
        .where(TaskDependency.depends_on_id.in_(task_ids), Task.deleted_at.is_(None))
        .order_by(TaskDependency.depends_on_id, Task.id)
    )
    grouped: dict[int, list[Task]] = {task_id: [] for task_id in task_ids}
    for depends_on_id, task in rows:
        grouped[depends_on_id].append(task)
    return grouped


async def would_cycle(session: AsyncSession, task_id: int, depends_on_id: int) -> bool:
    """True when `depends_on_id` already depends, directly or not, on `task_id`."""
    reach = (
        select(TaskDependency.depends_on_id.label("id"))
        .where(TaskDependency.task_id == depends_on_id)
        .cte("reach", recursive=True)
    )
    reach = reach.union(select(TaskDependency.depends_on_id).join(reach, TaskDependency.task_id == reach.c.id))
    found = await session.scalar(select(literal(1)).select_from(reach).where(reach.c.id == task_id).limit(1))
    return found is not None


async def _lock_for_edit(session: AsyncSession, task_id: int) -> Task:
    """Lock the task's project (serialising graph edits), then the task itself."""
    task = await require_task(session, task_id)
    await require_project(session, task.project_id, for_update=True)
    # The unlocked read stays in the identity map, and a plain re-select does not refresh
    # it: expire it so the locked read loads what a concurrent completion committed.
    session.expire(task)
    return await require_task(session, task_id, lock=True)


async def add_dependency(session: AsyncSession, task_id: int, depends_on_id: int, *, actor: str | None) -> Task:
    """Make `task_id` wait for `depends_on_id`. Same project, no cycles; adding an existing
    dependency changes nothing. Edits are serialised per project (its row lock), so two
    concurrent additions cannot close a cycle between them."""
    if task_id == depends_on_id:
        raise CycleDetected(f"task {task_id} cannot depend on itself")
    task = await _lock_for_edit(session, task_id)
    # Locking the dependency waits out a concurrent completion of it, so its status is final.
    dependency = await require_task(session, depends_on_id, lock=True)
    if dependency.project_id != task.project_id:
        raise BadInput(
            f"task {depends_on_id} is in project {dependency.project_id} and task {task_id} in "
            f"project {task.project_id}; dependencies must be in the same project"
        )
    exists = await session.scalar(
        select(literal(1)).where(TaskDependency.task_id == task_id, TaskDependency.depends_on_id == depends_on_id)
    )
    if exists:
        return task
    if await would_cycle(session, task_id, depends_on_id):
        raise CycleDetected(
            f"task {depends_on_id} already depends (directly or through others) on task {task_id}; "
            "adding this dependency would create a cycle"
        )
    session.add(TaskDependency(task_id=task_id, depends_on_id=depends_on_id))
    if dependency.status != TaskStatus.COMPLETED:
        task.unmet_dependencies += 1
    record_event(session, task, TaskEventType.DEPENDENCY_ADDED, actor=actor, data={"dependsOn": str(depends_on_id)})
    await session.flush()
    return task


async def remove_dependency(session: AsyncSession, task_id: int, depends_on_id: int, *, actor: str | None) -> Task:
    task = await _lock_for_edit(session, task_id)
    removed = await session.execute(
        delete(TaskDependency).where(TaskDependency.task_id == task_id, TaskDependency.depends_on_id == depends_on_id)
    )
    if not rowcount(removed):
        return task
    record_event(session, task, TaskEventType.DEPENDENCY_REMOVED, actor=actor, data={"dependsOn": str(depends_on_id)})
    await recount_and_unblock(session, [task_id], actor=actor)
    await session.refresh(task)
    return task


async def recount_unmet(session: AsyncSession, task_ids: Sequence[int]) -> None:
    """Recompute the readiness counter of these tasks from their dependencies."""
    dep = Task.__table__.alias("dep")
    unmet = (
        select(func.count())
        .select_from(TaskDependency.__table__.join(dep, dep.c.id == TaskDependency.depends_on_id))
        .where(and_(TaskDependency.task_id == Task.id, dep.c.status != TaskStatus.COMPLETED.value))
        .scalar_subquery()
    )
    await session.execute(
        update(Task).where(Task.id.in_(task_ids)).values(unmet_dependencies=unmet),
        execution_options={"synchronize_session": False},
    )


async def recount_and_unblock(session: AsyncSession, task_ids: Sequence[int], *, actor: str | None) -> None:
    """Recount after dependency links were removed; UNBLOCKED for tasks that became ready.
    Callers hold the project's lock (removal) or the deleted task's lock (hard delete)."""
    if not task_ids:
        return
    before = dict(
        (
            await session.execute(
                select(Task.id, Task.unmet_dependencies).where(Task.id.in_(task_ids)).with_for_update()
            )
        ).all()
    )
    await recount_unmet(session, task_ids)
    rows = await session.scalars(
        select(Task).where(Task.id.in_(task_ids)), execution_options={"populate_existing": True}
    )
    for task in rows:
        if before.get(task.id, 0) > 0 and task.unmet_dependencies == 0 and task.status == TaskStatus.PENDING:
            record_event(session, task, TaskEventType.UNBLOCKED, actor=actor)
    await session.flush()


async def unblock_dependents(session: AsyncSession, completed: Task, *, actor: str | None) -> list[Task]:
    """`completed` just became COMPLETED: count it as met for each dependent (an atomic
    decrement under the dependent's row lock, safe against concurrent completions) and emit
    UNBLOCKED for each PENDING dependent left with nothing to wait for."""
    ids = list(
        await session.scalars(select(TaskDependency.task_id).where(TaskDependency.depends_on_id == completed.id))
    )
    if not ids:
        return []
    rows = await session.scalars(
        update(Task)
        .where(Task.id.in_(ids), Task.unmet_dependencies > 0)
        .values(unmet_dependencies=Task.unmet_dependencies - 1)
        .returning(Task),
        execution_options={"populate_existing": True},
    )
    unblocked = [t for t in rows if t.unmet_dependencies == 0 and t.status == TaskStatus.PENDING]
    for task in unblocked:
        record_event(
            session, task, TaskEventType.UNBLOCKED, actor=actor, data={"completedDependency": str(completed.id)}
        )
    # Flush like every other writer here: on SQLite the transaction stamps events with a
    # textual UPDATE just before commit, which does not autoflush pending rows.
    await session.flush()
    return unblocked
