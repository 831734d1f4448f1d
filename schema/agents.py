"""Agent, its stats and registration."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from ..db import models
from .enums import AgentStatus

if TYPE_CHECKING:
    from .tasks import Task


@strawberry.type
class AgentStats:
    total_tasks: int
    completed_tasks: int
    failed_tasks: int

    @strawberry.field(description="completed / (completed + failed), 0 when none.")
    def success_rate(self) -> float:
        done = self.completed_tasks + self.failed_tasks
        return round(self.completed_tasks / done, 4) if done else 0.0


@strawberry.type
class Agent:
    row: strawberry.Private[models.Agent]
    id: strawberry.ID
    name: str
    role: str | None
    skills: list[str]
    capabilities: JSON | None
    status: AgentStatus
    max_concurrent_tasks: int
    last_heartbeat_at: datetime | None
    registered_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, row: models.Agent) -> Agent:
        return cls(
            row=row,
            id=strawberry.ID(str(row.id)),
            name=row.name,
            role=row.role,
            skills=list(row.skills or []),
            capabilities=row.capabilities,
            status=AgentStatus(row.status),
            max_concurrent_tasks=row.max_concurrent_tasks,
            last_heartbeat_at=row.last_heartbeat_at,
            registered_at=row.registered_at,
            deleted_at=row.deleted_at,
        )

    @strawberry.field(description="ASSIGNED, RUNNING or REVIEWING tasks assigned to it.")
    async def current_tasks(self, info: strawberry.Info) -> list[Annotated[Task, strawberry.lazy(".tasks")]]:
        from .tasks import Task

        return [Task.from_row(r) for r in await info.context.loaders.current_tasks.load(self.row.id)]

    @strawberry.field
    def stats(self) -> AgentStats:
        return AgentStats(
            total_tasks=self.row.claimed_count,
            completed_tasks=self.row.completed_count,
            failed_tasks=self.row.failed_count,
        )


@strawberry.type
class AgentRegistration:
    agent: Agent
    token: str | None = strawberry.field(description="The agent's bearer token; returned only here, stored hashed.")


@strawberry.type
class AgentPresenceEvent:
    agent: Agent
    previous_status: AgentStatus | None
    status: AgentStatus
    at: datetime


@strawberry.input
class RegisterAgentInput:
    name: str
    role: str | None = None
    skills: list[str] | None = None
    capabilities: JSON | None = None
    max_concurrent_tasks: int | None = None
