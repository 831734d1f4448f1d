"""The task lifecycle (docs/ARCHITECTURE.md's table): every transition is a conditional change of a
locked row plus its TaskEvent, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import (
    Conflict,
    DependenciesNotMet,
    Forbidden,
    InvalidTransition,
    LimitReached,
    StaleAttempt,
)
from .agents import (
    active_task_count,
    count_outcome,
    lock_agent_by_id,
    refresh_status,
    touch,
)
from .base import utcnow
from .dependencies import unblock_dependents
from .enums import ACTIVE_STATUSES, HELD_STATUSES, TERMINAL_STATUSES, TaskEventType, TaskStatus
from .events import record_event
from .models import Agent, Project, SkillSet, Task
from .tasks import claim_order, has_any_tag, require_task, unblocked_pending


@dataclass(frozen=True)
class Policy:
    """The settings the lifecycle needs."""

    lease_seconds: float
    backoff_seconds: float = 10
    backoff_max_seconds: float = 900

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_seconds * 2.0 ** max(attempt - 1, 0), self.backoff_max_seconds)


async def _check_limit(session: AsyncSession, agent: Agent) -> None:
    held = await active_task_count(session, agent.id)
    if held >= agent.max_concurrent_tasks:
        raise limit_reached(agent.name, held, agent.max_concurrent_tasks)


def limit_reached(name: str, held: int, limit: int) -> LimitReached:
    """The error for an agent that already holds its maxConcurrentTasks active tasks."""
    return LimitReached(
        f"agent '{name}' already holds {held} active tasks (maxConcurrentTasks {limit}); "
        "finish, submit or release one first"
    )


def _assign(task: Task, agent: Agent, now: datetime, policy: Policy) -> None:
    task.status = TaskStatus.ASSIGNED.value
    task.assignee_id = agent.id
    task.attempt += 1
    task.assigned_at = now
    task.started_at = None
    task.submitted_at = None
    task.progress = None
    task.progress_message = None
    task.lease_expires_at = now + timedelta(seconds=policy.lease_seconds)
    task.updated_at = now
    agent.claimed_count += 1


async def matching_skill_sets(session: AsyncSession, agent: Agent) -> list[int]:
    have = set(agent.skills or [])
    rows = await session.execute(select(SkillSet.id, SkillSet.skills))
    return [set_id for set_id, skills in rows if set(skills or []) <= have]


def _candidates(skill_sets: list[int], now: datetime, *, project_id: int | None, tags: list[str] | None) -> Any:
    """The id of the best claimable task among `skill_sets`, as a scalar subquery that locks
    it (FOR UPDATE SKIP LOCKED: concurrent claimers pass over each other's rows).

    Only claimable rows are in the partial index, per skill set, in claim order. For each
    skill set the agent satisfies, one ordered index scan stops at its first unlocked row;
    the best of those few wins; scheduled tasks come from their own index, read only up to
    now. So the cost does not grow with blocked, scheduled or non-matching tasks, nor with
    the number of ready ones: a single `skill_set_id IN (...)` scan would read and sort
    every ready task of those sets. The other candidates stay locked until this short
    transaction ends.
    """
    filters: list[Any] = [
        *unblocked_pending(),
        exists().where(Project.id == Task.project_id, Project.status == "ACTIVE", Project.deleted_at.is_(None)),
    ]
    if project_id is not None:
        filters.append(Task.project_id == project_id)
    if tags:
        filters.append(has_any_tag(tags))
    # Per skill set: the best task without availableAt (ix_tasks_claim_order, read in order)
    # and the best scheduled one already due (ix_tasks_claim_scheduled, read up to now).
    timing = (Task.available_at.is_(None), and_(Task.available_at.is_not(None), Task.available_at <= now))

    def best_of(set_id: int, when: Any) -> Any:
        # Only the id and the ordering columns: a subquery proxies every column it selects,
        # and building that for the whole row cost more CPU than the rest of the claim.
        return (
            select(Task.id, Task.priority, Task.due_at, Task.created_at)
            .where(*filters, when, Task.skill_set_id == set_id)
            .order_by(*claim_order())
            .limit(1)
            .with_for_update(skip_locked=True, of=Task)
        )

    candidates = union_all(*(select(best_of(s, when).subquery()) for s in skill_sets for when in timing)).subquery()
    c = candidates.c
    best = select(c.id).order_by(c.priority.desc(), c.due_at.asc().nulls_last(), c.created_at, c.id).limit(1)
    return best.scalar_subquery()


async def claim_next(
    session: AsyncSession,
    agent: Agent,
    policy: Policy,
    *,
    project_id: int | None = None,
    tags: list[str] | None = None,
) -> Task | None:
    """Claim the best ready task `agent` may take, or None. `agent` must be locked.
    (The ORM path, used on SQLite; PostgreSQL runs db/driver.py's Driver.claim_next.)"""
    await _check_limit(session, agent)
    skill_sets = await matching_skill_sets(session, agent)
    if not skill_sets:
        return None
    now = utcnow()
    best = _candidates(skill_sets, now, project_id=project_id, tags=tags)
    query = select(Task).where(Task.id == best)
    task = await session.scalar(query)
    if task is None:
        return None
    _assign(task, agent, now, policy)
    record_event(session, task, TaskEventType.CLAIMED, from_status="PENDING", to_status="ASSIGNED", actor=agent.name)
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


async def claim(session: AsyncSession, task_id: int, agent: Agent, policy: Policy) -> Task:
    """Claim task `task_id` for `agent` (locked by the caller). Exactly one concurrent
    claimer wins: the row is locked, then its state checked; losers get CONFLICT."""
    task = await require_task(session, task_id, lock=True)
    now = utcnow()
    if task.status != TaskStatus.PENDING:
        if task.status in HELD_STATUSES:
            holder = await session.get(Agent, task.assignee_id) if task.assignee_id else None
            who = "you" if holder is not None and holder.id == agent.id else f"agent '{holder.name if holder else '?'}'"
            raise Conflict(f"task {task_id} is already {task.status} by {who}; claim another task")
        raise InvalidTransition(f"task {task_id} is {task.status}; only PENDING tasks can be claimed")
    if task.unmet_dependencies > 0:
        raise DependenciesNotMet(
            f"task {task_id} waits for {task.unmet_dependencies} unfinished dependencies; see its blockedBy"
        )
    if task.available_at is not None and task.available_at > now:
        raise InvalidTransition(
            f"task {task_id} is not available before {task.available_at.isoformat()}; claim it then"
        )
    missing = sorted(set(task.required_skills or []) - set(agent.skills or []))
    if missing:
        raise Forbidden(f"agent '{agent.name}' lacks the skills {missing} that task {task_id} requires")
    project = await session.get(Project, task.project_id)
    if project is None or project.status != "ACTIVE" or project.deleted_at is not None:
        status = project.status if project else "missing"
        raise InvalidTransition(f"project {task.project_id} is {status}; its tasks cannot be claimed")
    await _check_limit(session, agent)
    _assign(task, agent, now, policy)
    record_event(session, task, TaskEventType.CLAIMED, from_status="PENDING", to_status="ASSIGNED", actor=agent.name)
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


async def held_task(
    session: AsyncSession,
    task_id: int,
    agent: Agent | None,
    *,
    attempt: int | None,
    allowed: tuple[str, ...],
    action: str,
) -> Task:
    """Lock the task and check fencing, ownership and status for an assignee's action."""
    task = await require_task(session, task_id, lock=True)
    if attempt is not None and attempt != task.attempt:
        raise StaleAttempt(
            f"task {task_id} is at attempt {task.attempt}, not {attempt}: it was re-claimed since; drop this work"
        )
    # Status before ownership: an action the status does not allow (e.g. on an unassigned
    # PENDING task) is INVALID_TRANSITION for everyone, not FORBIDDEN.
    if task.status not in allowed:
        raise InvalidTransition(f"task {task_id} is {task.status}; {action} needs it {' or '.join(allowed)}")
    if agent is not None and task.assignee_id != agent.id:
        raise Forbidden(f"task {task_id} is not assigned to agent '{agent.name}'; only its assignee can {action} it")
    return task


async def start(session: AsyncSession, task_id: int, agent: Agent, policy: Policy, *, attempt: int | None) -> Task:
    task = await held_task(session, task_id, agent, attempt=attempt, allowed=("ASSIGNED",), action="start")
    now = utcnow()
    task.status = TaskStatus.RUNNING.value
    task.started_at = now
    task.updated_at = now
    record_event(session, task, TaskEventType.STARTED, from_status="ASSIGNED", to_status="RUNNING", actor=agent.name)
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


async def report_progress(
    session: AsyncSession,
    task_id: int,
    agent: Agent,
    policy: Policy,
    *,
    progress: int,
    message: str | None,
    attempt: int | None,
) -> Task:
    task = await held_task(
        session, task_id, agent, attempt=attempt, allowed=ACTIVE_STATUSES, action="report progress on"
    )
    task.progress = progress
    task.progress_message = message
    task.updated_at = utcnow()
    record_event(
        session,
        task,
        TaskEventType.PROGRESS,
        from_status=task.status,
        to_status=task.status,
        actor=agent.name,
        message=message,
        data={"progress": progress},
    )
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


async def _complete(session: AsyncSession, task: Task, now: datetime, actor: str | None) -> None:
    task.status = TaskStatus.COMPLETED.value
    task.completed_at = now
    task.lease_expires_at = None
    if task.assignee_id is not None:
        await count_outcome(session, task.assignee_id, "completed")
    await session.flush()
    await unblock_dependents(session, task, actor=actor)


async def submit(
    session: AsyncSession,
    task_id: int,
    agent: Agent,
    policy: Policy,
    *,
    result: Any,
    summary: str | None,
    attempt: int | None,
) -> Task:
    task = await held_task(session, task_id, agent, attempt=attempt, allowed=ACTIVE_STATUSES, action="submit")
    now = utcnow()
    before = task.status
    task.result = result
    task.summary = summary
    task.submitted_at = now
    task.updated_at = now
    task.lease_expires_at = None
    if task.requires_review:
        task.status = TaskStatus.REVIEWING.value
        record_event(
            session, task, TaskEventType.SUBMITTED, from_status=before, to_status="REVIEWING", actor=agent.name
        )
    else:
        record_event(
            session, task, TaskEventType.SUBMITTED, from_status=before, to_status="COMPLETED", actor=agent.name
        )
        await _complete(session, task, now, agent.name)
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


def _requeue(task: Task, now: datetime, *, available_at: datetime | None = None) -> None:
    task.status = TaskStatus.PENDING.value
    task.assignee_id = None
    task.lease_expires_at = None
    task.available_at = available_at
    task.updated_at = now


async def review(session: AsyncSession, task_id: int, *, reviewer: str, approved: bool, feedback: str | None) -> Task:
    task = await require_task(session, task_id, lock=True)
    assignee = await session.get(Agent, task.assignee_id) if task.assignee_id else None
    if assignee is not None and assignee.name == reviewer:
        raise Forbidden(f"agent '{reviewer}' did task {task_id} and cannot review it; ask another agent")
    if task.reviewer and task.reviewer != reviewer:
        raise Forbidden(f"task {task_id} is to be reviewed by '{task.reviewer}', not '{reviewer}'")
    if task.status != TaskStatus.REVIEWING:
        raise InvalidTransition(f"task {task_id} is {task.status}; only REVIEWING tasks can be reviewed")
    now = utcnow()
    task.feedback = feedback
    task.updated_at = now
    if approved:
        record_event(
            session,
            task,
            TaskEventType.APPROVED,
            from_status="REVIEWING",
            to_status="COMPLETED",
            actor=reviewer,
            message=feedback,
        )
        await _complete(session, task, now, reviewer)
        return task
    if task.assignee_id is not None:
        await count_outcome(session, task.assignee_id, "failed")
    to = TaskStatus.PENDING if task.attempt < task.max_attempts else TaskStatus.FAILED
    record_event(
        session,
        task,
        TaskEventType.REJECTED,
        from_status="REVIEWING",
        to_status=to.value,
        actor=reviewer,
        message=feedback,
    )
    if to is TaskStatus.PENDING:
        _requeue(task, now)
    else:
        task.status = TaskStatus.FAILED.value
        task.last_error = f"rejected on the last attempt ({task.attempt}/{task.max_attempts}): {feedback or ''}".rstrip(
            ": "
        )
    await session.flush()
    return task


async def release(
    session: AsyncSession, task_id: int, agent: Agent | None, policy: Policy, *, reason: str | None, attempt: int | None
) -> Task:
    task = await held_task(session, task_id, agent, attempt=attempt, allowed=ACTIVE_STATUSES, action="release")
    holder = agent or (await lock_agent_by_id(session, task.assignee_id) if task.assignee_id else None)
    _release(session, task, actor=agent.name if agent else None, reason=reason)
    if agent is not None:
        await touch(session, agent, lease_seconds=policy.lease_seconds)
    elif holder is not None:
        await refresh_status(session, holder)
    return task


async def requeue_or_fail(
    session: AsyncSession,
    task: Task,
    policy: Policy,
    *,
    event: TaskEventType,
    error: str,
    retryable: bool = True,
    backoff: bool = True,
    actor: str | None = None,
    count_failure: bool = True,
) -> None:
    """The failTask rule, shared with lease expiry and timeouts: back to PENDING (after a
    backoff) while attempts remain, else FAILED."""
    now = utcnow()
    before = task.status
    task.last_error = error
    if count_failure and task.assignee_id is not None:
        await count_outcome(session, task.assignee_id, "failed")
    if retryable and task.attempt < task.max_attempts:
        delay = policy.backoff(task.attempt) if backoff else 0
        available = now + timedelta(seconds=delay) if delay > 0 else None
        record_event(
            session,
            task,
            event,
            from_status=before,
            to_status="PENDING",
            actor=actor,
            message=error,
            data={"retryAt": available.isoformat()} if available else None,
        )
        _requeue(task, now, available_at=available)
    else:
        record_event(session, task, event, from_status=before, to_status="FAILED", actor=actor, message=error)
        task.status = TaskStatus.FAILED.value
        task.lease_expires_at = None
        task.updated_at = now
    await session.flush()


async def fail(
    session: AsyncSession,
    task_id: int,
    agent: Agent,
    policy: Policy,
    *,
    error: str,
    retryable: bool,
    attempt: int | None,
) -> Task:
    task = await held_task(session, task_id, agent, attempt=attempt, allowed=ACTIVE_STATUSES, action="fail")
    await requeue_or_fail(
        session, task, policy, event=TaskEventType.FAILED, error=error, retryable=retryable, actor=agent.name
    )
    await touch(session, agent, lease_seconds=policy.lease_seconds)
    return task


async def retry(session: AsyncSession, task_id: int, *, actor: str | None) -> Task:
    task = await require_task(session, task_id, lock=True)
    if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise InvalidTransition(f"task {task_id} is {task.status}; only FAILED or CANCELLED tasks can be retried")
    before = task.status
    if task.attempt >= task.max_attempts:
        task.max_attempts = task.attempt + 1
    _requeue(task, utcnow())
    record_event(
        session,
        task,
        TaskEventType.RETRIED,
        from_status=before,
        to_status="PENDING",
        actor=actor,
        data={"maxAttempts": task.max_attempts},
    )
    await session.flush()
    return task


async def cancel(
    session: AsyncSession, task_id: int, *, reason: str | None, actor: str | None, as_agent: int | None = None
) -> Task:
    """Cancel an unfinished task. `as_agent`: the calling agent, which may not cancel a task
    another agent holds (FORBIDDEN)."""
    # Agent before task (the claim order). Read only the assignee id unlocked: a Task loaded
    # here would stay in the identity map and hide the state committed while we wait for the lock.
    assignee_id = await session.scalar(select(Task.assignee_id).where(Task.id == task_id))
    holder = await lock_agent_by_id(session, assignee_id) if assignee_id else None
    task = await require_task(session, task_id, lock=True)
    if task.status in TERMINAL_STATUSES:
        raise InvalidTransition(f"task {task_id} is already {task.status}; only unfinished tasks can be cancelled")
    if as_agent is not None and task.assignee_id is not None and task.assignee_id != as_agent:
        raise Forbidden(f"task {task_id} is held by another agent; only that agent or the admin key can cancel it")
    before = task.status
    now = utcnow()
    task.status = TaskStatus.CANCELLED.value
    task.lease_expires_at = None
    task.updated_at = now
    record_event(
        session, task, TaskEventType.CANCELLED, from_status=before, to_status="CANCELLED", actor=actor, message=reason
    )
    if holder is not None and holder.id == task.assignee_id:
        await refresh_status(session, holder, now=now)
    await session.flush()
    return task


async def lock_active_tasks(session: AsyncSession, agent_id: int) -> list[Task]:
    """The agent's ASSIGNED/RUNNING tasks, locked (the caller holds the agent's lock)."""
    query = select(Task).where(Task.assignee_id == agent_id, Task.status.in_(ACTIVE_STATUSES))
    return list((await session.scalars(query.with_for_update())).all())


async def lock_active_tasks_unless_busy(session: AsyncSession, agent_id: int) -> list[Task] | None:
    """Like lock_active_tasks, but None at once (no wait) when another transaction holds one
    of them: the reaper leaves that agent for a later pass rather than stall every other
    agent's expiry behind a long transaction."""
    query = select(Task).where(Task.assignee_id == agent_id, Task.status.in_(ACTIVE_STATUSES))
    tasks = list((await session.scalars(query.with_for_update(skip_locked=True))).all())
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    return tasks if len(tasks) == total else None


def _release(session: AsyncSession, task: Task, *, actor: str | None, reason: str | None) -> None:
    record_event(
        session,
        task,
        TaskEventType.RELEASED,
        from_status=task.status,
        to_status="PENDING",
        actor=actor,
        message=reason,
    )
    _requeue(task, utcnow())


async def release_all(session: AsyncSession, agent: Agent, *, reason: str, actor: str | None) -> list[Task]:
    """Return every active task of `agent` (locked) to PENDING: unregistering."""
    tasks = await lock_active_tasks(session, agent.id)
    for task in tasks:
        _release(session, task, actor=actor, reason=reason)
    await session.flush()
    return tasks
