"""The Subscription fields: taskEvents, taskChanged, agentPresence, dashboardStats.

Each holds no database session while it waits; it reads the log (or the agents) in short
sessions when the bus says something changed. See events/ for the guarantees.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from typing import Any

import strawberry

from ..db import agents as db_agents
from ..db import models
from ..db.base import utcnow
from ..errors import DomainError, ErrorCode, NotFound
from ..events.fanout import Ride
from ..events.replay import EventFilter, SubscriberTooSlow, follow_events, until_answered
from ..schema import validate
from ..schema.agents import Agent, AgentPresenceEvent
from ..schema.enums import AgentStatus, TaskStatus
from ..schema.events import TaskEvent
from ..schema.sharing import share
from ..schema.stats import DashboardStats
from ..schema.tasks import Task
from .context import Context

Info = strawberry.Info[Context, None]
PRESENCE_POLL_SECONDS = 30.0


class TooManySubscriptions(DomainError):
    code = ErrorCode.QUERY_TOO_COMPLEX


@contextlib.asynccontextmanager
async def _slot(info: Info, field: str) -> AsyncIterator[Any]:
    """Count this subscription against the connection's limit while it runs; yields the
    counter of events delivered to it (metrics)."""
    context = info.context
    limit = context.settings.max_subscriptions_per_connection
    if context.subscriptions >= limit:
        raise TooManySubscriptions(
            f"this connection already runs {limit} subscriptions (MAX_SUBSCRIPTIONS_PER_CONNECTION); "
            "stop one or open another connection"
        )
    metrics = context.services.metrics
    context.subscriptions += 1
    metrics.subscriptions_open.labels(field).inc()
    try:
        yield metrics.events_delivered.labels(field)
    except SubscriberTooSlow as exc:
        metrics.events_dropped.labels(field, "lag").inc(exc.extensions.get("behind", 0))
        raise
    finally:
        metrics.subscriptions_open.labels(field).dec()
        context.subscriptions -= 1


_PAYLOAD_ATTRIBUTE = "_task_events_payload"


def _task_event(row: models.TaskEvent) -> TaskEvent:
    """taskEvents' payload for a row of the log, marked as shared, built once per row: the
    subscribers of a process read the same row objects from the tail (events/tail.py), and a
    TaskEvent built for each of them was 5 % of the server's CPU during fan-out. The payload
    is read-only, so every subscriber may hold the same one."""
    payload: TaskEvent | None = row.__dict__.get(_PAYLOAD_ATTRIBUTE)
    if payload is None:
        payload = share(TaskEvent.from_row(row), ("taskEvents", row.seq))
        setattr(row, _PAYLOAD_ATTRIBUTE, payload)
    return payload


async def _agent_id(info: Info, name: str | None) -> int | None:
    if name is None:
        return None
    async with info.context.services.read() as session:
        agent = await db_agents.get_agent(session, name)
    if agent is None:
        raise NotFound(f"agent '{name}' is not registered")
    return agent.id


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description='With after: replays stored events with id > after ("0" = all), then streams '
        "live; without: live only. Resuming with the last id seen skips and repeats nothing."
    )
    async def task_events(
        self,
        info: Info,
        after: strawberry.ID | None = None,
        project_id: strawberry.ID | None = None,
        task_id: strawberry.ID | None = None,
        agent: str | None = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        cursor = None if after is None else (0 if after == "0" else validate.parse_id(after, "after"))
        where = EventFilter(
            project_id=validate.optional_id(project_id, "projectId"),
            task_id=validate.optional_id(task_id, "taskId"),
            agent_id=await _agent_id(info, agent),
        )
        services = info.context.services
        async with _slot(info, "taskEvents") as delivered:
            seat = info.context.fan_out_seat()
            # Live, it rides the fan-out group of its selection and filter (events/fanout.py).
            ride = None if seat is None else Ride(services.fan_out, seat, where, _task_event, delivered.inc)
            async for row in follow_events(
                services,
                after=cursor,
                where=where,
                max_lag=info.context.settings.max_subscriber_lag,
                ride=ride,
            ):
                delivered.inc()
                yield _task_event(row)

    @strawberry.subscription(description="The task's state after each change that matches the filter.")
    async def task_changed(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        status: list[TaskStatus] | None = None,
        assignee: str | None = None,
    ) -> AsyncGenerator[Task, None]:
        where = EventFilter(project_id=validate.optional_id(project_id, "projectId"))
        wanted = {s.value for s in status} if status else None
        assignee_id = await _agent_id(info, assignee)
        async with _slot(info, "taskChanged") as delivered:
            async for event in follow_events(
                info.context.services, after=None, where=where, max_lag=info.context.settings.max_subscriber_lag
            ):
                snapshots = info.context.services.snapshots
                row = await until_answered(partial(snapshots.after, event.seq or 0, event.task_id))
                if row is None:
                    continue
                if wanted is not None and row.status not in wanted:
                    continue
                if assignee_id is not None and row.assignee_id != assignee_id:
                    continue
                delivered.inc()
                yield share(Task.from_row(row), ("taskChanged", event.seq))

    @strawberry.subscription(
        description="First one event per matching agent with its current status, then every change."
    )
    async def agent_presence(self, info: Info, name: str | None = None) -> AsyncGenerator[AgentPresenceEvent, None]:
        services = info.context.services
        async with _slot(info, "agentPresence") as delivered:
            with services.bus.listen(presence=True) as listener:
                known: dict[int, str] = {}
                for event in await _presence_snapshot(info, name, known, only_changes=False):
                    delivered.inc()
                    yield event
                while True:
                    await listener.wait(PRESENCE_POLL_SECONDS)
                    batch = listener.take_presence()
                    if not batch.complete:
                        # Changes may have been missed (bus outage, burst): report the
                        # difference between what we last told and the database now.
                        if batch.overflowed:
                            services.metrics.events_dropped.labels("agentPresence", "overflow").inc(len(batch.changes))
                        for event in await _presence_snapshot(info, name, known, only_changes=True):
                            delivered.inc()
                            yield event
                        continue
                    for signal in batch.changes:
                        change = signal.change
                        if name is not None and change.name != name:
                            continue
                        # One load per change for all this process's subscribers.
                        agent = await services.agent_snapshots.after(signal.n, change.agent_id)
                        if agent is None:
                            continue
                        previous = known.get(agent.id, change.previous)
                        if previous == change.status:
                            continue
                        known[agent.id] = change.status
                        delivered.inc()
                        yield AgentPresenceEvent(
                            agent=Agent.from_row(agent),
                            previous_status=AgentStatus(previous) if previous else None,
                            status=AgentStatus(change.status),
                            at=change.at,
                        )

    @strawberry.subscription(description="First the current stats, then fresh stats after changes (about 2/s at most).")
    async def dashboard_stats(
        self, info: Info, project_id: strawberry.ID | None = None
    ) -> AsyncGenerator[DashboardStats, None]:
        key = validate.optional_id(project_id, "projectId")
        async with _slot(info, "dashboardStats") as delivered:
            stream: Any = info.context.services.stats_hub.subscribe(key)
            try:
                async for counts in stream:
                    delivered.inc()
                    yield DashboardStats.from_counts(counts)
            finally:
                await stream.aclose()


async def _presence_snapshot(
    info: Info, name: str | None, known: dict[int, str], *, only_changes: bool
) -> list[AgentPresenceEvent]:
    async with info.context.services.read() as session:
        if name is not None:
            agent = await db_agents.get_agent(session, name)
            rows = [agent] if agent is not None else []
        else:
            rows = await db_agents.list_agents(session)
    now = utcnow()
    events = []
    for row in rows:
        previous = known.get(row.id)
        if only_changes and previous == row.status:
            continue
        known[row.id] = row.status
        events.append(
            AgentPresenceEvent(
                agent=Agent.from_row(row),
                previous_status=AgentStatus(previous) if previous else None,
                status=AgentStatus(row.status),
                at=now,
            )
        )
    return events
