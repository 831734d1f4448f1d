"""The agent-facing lifecycle mutations: claim, start, progress, submit, release, fail, review,
retry and cancel. Each runs one transaction: idempotency key, agent lock, transition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, overload

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.scalars import JSON

from ..db import agents as db_agents
from ..db import idempotency as db_idempotency
from ..db import lifecycle as db_lifecycle
from ..db.models import Agent
from ..db.models import Task as TaskRow
from ..db.tasks import get_task
from ..errors import BadInput
from ..schema import validate
from ..schema.tasks import Task
from .context import Context

Info = strawberry.Info[Context, None]
# What a mutation does in its transaction, with the acting agent's row locked: an agent's
# own action gets the agent (run() is given its name), the others None or the agent.
AgentAction = Callable[[AsyncSession, Agent], Awaitable[TaskRow]]
Action = Callable[[AsyncSession, Agent | None], Awaitable[TaskRow]]


def policy(info: Info) -> db_lifecycle.Policy:
    """The lease and retry rules (built once from settings, on Services)."""
    return info.context.services.policy


@overload
async def run(
    info: Info, operation: str, action: AgentAction, *, agent: str, key: str | None, caller: str | None = None
) -> TaskRow: ...


@overload
async def run(
    info: Info, operation: str, action: Action, *, agent: str | None, key: str | None, caller: str | None = None
) -> TaskRow: ...


async def run(
    info: Info,
    operation: str,
    action: Callable[[AsyncSession, Any], Awaitable[TaskRow]],
    *,
    agent: str | None,
    key: str | None,
    caller: str | None = None,
) -> TaskRow:
    """One transaction: replay an idempotent repeat, else lock the agent (if any) and act."""
    who = caller or info.context.caller.idempotency_owner(agent)
    async with info.context.services.transaction() as session:
        if key is not None:
            prior = await db_idempotency.claim_key(session, caller=who, key=key, operation=operation)
            if prior is not None:
                row = await get_task(session, prior)
                if row is None:
                    raise BadInput(f"idempotencyKey '{key}' belongs to a task that no longer exists")
                return row
        locked = await db_agents.require_agent(session, agent, lock=True) if agent is not None else None
        task = await action(session, locked)
        if key is not None:
            await db_idempotency.remember(session, caller=who, key=key, task_id=task.id)
    return task


@strawberry.type
class LifecycleMutation:
    @strawberry.mutation
    async def claim_task(
        self, info: Info, id: strawberry.ID, agent: str | None = None, idempotency_key: str | None = None
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        row = await run(
            info,
            "claimTask",
            lambda s, a: db_lifecycle.claim(s, task_id, a, policy(info)),
            agent=name,
            key=idempotency_key,
        )
        info.context.services.metrics.claims.labels("claimTask").inc()
        return Task.from_row(row)

    @strawberry.mutation(description="Claims the best ready task this agent may take; null when none.")
    async def claim_next_task(
        self,
        info: Info,
        agent: str | None = None,
        project_id: strawberry.ID | None = None,
        tags: list[str] | None = None,
    ) -> Task | None:
        name = info.context.caller.acting_agent(agent)
        pid = validate.optional_id(project_id, "projectId")
        labels = validate.labels(tags, "tags")
        row = await info.context.services.claim_next(name, project_id=pid, tags=labels)
        metrics = info.context.services.metrics
        if row is None:
            metrics.claims_empty.inc()
            return None
        metrics.claims.labels("claimNextTask").inc()
        return Task.from_row(row)

    @strawberry.mutation
    async def start_task(
        self,
        info: Info,
        id: strawberry.ID,
        agent: str | None = None,
        attempt: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        row = await run(
            info,
            "startTask",
            lambda s, a: db_lifecycle.start(s, task_id, a, policy(info), attempt=attempt),
            agent=name,
            key=idempotency_key,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def report_progress(
        self,
        info: Info,
        id: strawberry.ID,
        progress: int,
        agent: str | None = None,
        message: str | None = None,
        attempt: int | None = None,
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        validate.int_range(progress, "progress", 0, 100)
        validate.description(message)
        row = await run(
            info,
            "reportProgress",
            lambda s, a: db_lifecycle.report_progress(
                s, task_id, a, policy(info), progress=progress, message=message, attempt=attempt
            ),
            agent=name,
            key=None,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def submit_task(
        self,
        info: Info,
        id: strawberry.ID,
        agent: str | None = None,
        result: JSON | None = None,
        summary: str | None = None,
        attempt: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        validate.description(summary)
        row = await run(
            info,
            "submitTask",
            lambda s, a: db_lifecycle.submit(
                s, task_id, a, policy(info), result=result, summary=summary, attempt=attempt
            ),
            agent=name,
            key=idempotency_key,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def release_task(
        self,
        info: Info,
        id: strawberry.ID,
        agent: str | None = None,
        reason: str | None = None,
        attempt: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        validate.description(reason)
        row = await run(
            info,
            "releaseTask",
            lambda s, a: db_lifecycle.release(s, task_id, a, policy(info), reason=reason, attempt=attempt),
            agent=name,
            key=idempotency_key,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def fail_task(
        self,
        info: Info,
        id: strawberry.ID,
        error: str,
        agent: str | None = None,
        retryable: bool | None = True,
        attempt: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        task_id, name = validate.parse_id(id), info.context.caller.acting_agent(agent)
        validate.text(error, "error", limit=10_000, required=True)
        row = await run(
            info,
            "failTask",
            lambda s, a: db_lifecycle.fail(
                s, task_id, a, policy(info), error=error, retryable=retryable is not False, attempt=attempt
            ),
            agent=name,
            key=idempotency_key,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def review_task(
        self,
        info: Info,
        id: strawberry.ID,
        reviewer: str,
        approved: bool,
        feedback: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        task_id = validate.parse_id(id)
        who = info.context.caller.acting_agent(reviewer)
        validate.description(feedback)
        row = await run(
            info,
            "reviewTask",
            lambda s, _: db_lifecycle.review(s, task_id, reviewer=who, approved=approved, feedback=feedback),
            agent=None,
            key=idempotency_key,
            caller=info.context.caller.idempotency_owner(who),
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def retry_task(self, info: Info, id: strawberry.ID, idempotency_key: str | None = None) -> Task:
        task_id = validate.parse_id(id)
        row = await run(
            info,
            "retryTask",
            lambda s, _: db_lifecycle.retry(s, task_id, actor=info.context.caller.actor),
            agent=None,
            key=idempotency_key,
        )
        return Task.from_row(row)

    @strawberry.mutation
    async def cancel_task(
        self, info: Info, id: strawberry.ID, reason: str | None = None, idempotency_key: str | None = None
    ) -> Task:
        task_id = validate.parse_id(id)
        validate.description(reason)
        row = await run(
            info,
            "cancelTask",
            lambda s, _: db_lifecycle.cancel(
                s, task_id, reason=reason, actor=info.context.caller.actor, as_agent=info.context.caller.agent_id
            ),
            agent=None,
            key=idempotency_key,
        )
        return Task.from_row(row)
