"""The task event log: append rows, stamp their public cursor, read them back in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .base import dialect_name, utcnow
from .effects import WrittenEvent, effects_of
from .enums import TaskEventType
from .models import Task, TaskEvent

# Any process may stamp; this transaction-scoped advisory lock makes the stamping
# transactions run one after another, so stamps become visible in increasing order.
SEQUENCER_LOCK_KEY = 0x7A5C_0001

_STAMP_SQL = text(
    """
    UPDATE task_events SET seq = numbered.base + numbered.rn
    FROM (
        SELECT id,
               row_number() OVER (ORDER BY id) AS rn,
               (SELECT coalesce(max(seq), 0) FROM task_events) AS base
        FROM task_events WHERE seq IS NULL
    ) AS numbered
    WHERE task_events.id = numbered.id
    """
)


def record_event(
    session: AsyncSession,
    task: Task,
    event_type: TaskEventType,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    actor: str | None = None,
    message: str | None = None,
    data: Any = None,
) -> TaskEvent:
    """Add one log row for a change of `task`, in the caller's transaction, and note it in
    the transaction's Effects (published after commit)."""
    event = TaskEvent(
        task_id=task.id,
        project_id=task.project_id,
        type=event_type.value,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        agent_id=task.assignee_id,
        message=message,
        data=data,
    )
    session.add(event)
    effects_of(session).events.append(WrittenEvent(task.id, event_type.value))
    return event


async def record_events(
    session: AsyncSession, tasks: Sequence[Task], event_type: TaskEventType, *, actor: str | None
) -> None:
    """record_event for many tasks entering their current status (createTasks): one INSERT."""
    if not tasks:
        return
    now = utcnow()
    await session.execute(
        insert(TaskEvent),
        [
            {
                "task_id": task.id,
                "project_id": task.project_id,
                "type": event_type.value,
                "from_status": None,
                "to_status": task.status,
                "actor": actor,
                "agent_id": task.assignee_id,
                "message": None,
                "data": None,
                "created_at": now,
            }
            for task in tasks
        ],
    )
    effects_of(session).events.extend(WrittenEvent(task.id, event_type.value) for task in tasks)


async def stamp_events(session: AsyncSession) -> int:
    """Give every committed, unstamped event the next cursor values, in id order.

    On PostgreSQL run it in its own short transaction (it takes the sequencer lock); on
    SQLite, the single writer, run it inside the writing transaction just before commit.
    Returns the highest cursor now assigned (0 when the log is empty).
    """
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK_KEY)))
    await session.execute(_STAMP_SQL)
    return await max_seq(session)


async def max_seq(session: AsyncSession) -> int:
    return (await session.scalar(select(func.coalesce(func.max(TaskEvent.seq), 0)))) or 0


async def list_events(
    session: AsyncSession,
    *,
    after: int = 0,
    upto: int | None = None,
    project_id: int | None = None,
    task_id: int | None = None,
    agent_id: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> Sequence[TaskEvent]:
    """Stamped events with seq > after, oldest first (or newest first), filtered."""
    query = select(TaskEvent).where(TaskEvent.seq.is_not(None), TaskEvent.seq > after)
    if upto is not None:
        query = query.where(TaskEvent.seq <= upto)
    if project_id is not None:
        query = query.where(TaskEvent.project_id == project_id)
    if task_id is not None:
        query = query.where(TaskEvent.task_id == task_id)
    if agent_id is not None:
        query = query.where(TaskEvent.agent_id == agent_id)
    order = TaskEvent.seq.desc() if newest_first else TaskEvent.seq
    return (await session.scalars(query.order_by(order).limit(limit))).all()


async def events_for_tasks(session: AsyncSession, task_ids: Sequence[int], *, limit: int) -> dict[int, list[TaskEvent]]:
    """The first `limit` stamped events of each task, oldest first, in one statement."""
    ranked = (
        select(
            TaskEvent.id,
            func.row_number().over(partition_by=TaskEvent.task_id, order_by=TaskEvent.seq).label("rn"),
        )
        .where(TaskEvent.task_id.in_(task_ids), TaskEvent.seq.is_not(None))
        .subquery()
    )
    rows = await session.scalars(
        select(TaskEvent)
        .join(ranked, ranked.c.id == TaskEvent.id)
        .where(ranked.c.rn <= limit)
        .order_by(TaskEvent.task_id, TaskEvent.seq)
    )
    grouped: dict[int, list[TaskEvent]] = {task_id: [] for task_id in task_ids}
    for event in rows:
        grouped[event.task_id].append(event)
    return grouped
