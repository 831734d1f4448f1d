"""DashboardStats and its counters."""

from __future__ import annotations

from datetime import datetime

import strawberry

from ..db.stats import DashboardCounts
from .events import TaskEvent


@strawberry.type
class TaskCounts:
    total: int
    pending: int
    ready: int
    assigned: int
    running: int
    reviewing: int
    completed: int
    failed: int
    cancelled: int


@strawberry.type
class AgentCounts:
    total: int
    online: int
    busy: int
    offline: int


@strawberry.type
class ProjectCounts:
    total: int
    active: int


@strawberry.type
class DeletedCounts:
    projects: int
    tasks: int
    agents: int


@strawberry.type
class DashboardStats:
    projects: ProjectCounts
    tasks: TaskCounts
    agents: AgentCounts
    deleted: DeletedCounts
    generated_at: datetime
    recent: strawberry.Private[list[TaskEvent]]

    @classmethod
    def from_counts(cls, counts: DashboardCounts) -> DashboardStats:
        tasks, agents = counts.tasks, counts.agents
        return cls(
            projects=ProjectCounts(**counts.projects),
            tasks=TaskCounts(
                total=tasks["total"],
                pending=tasks["PENDING"],
                ready=tasks["ready"],
                assigned=tasks["ASSIGNED"],
                running=tasks["RUNNING"],
                reviewing=tasks["REVIEWING"],
                completed=tasks["COMPLETED"],
                failed=tasks["FAILED"],
                cancelled=tasks["CANCELLED"],
            ),
            agents=AgentCounts(
                total=sum(agents.values()), online=agents["ONLINE"], busy=agents["BUSY"], offline=agents["OFFLINE"]
            ),
            deleted=DeletedCounts(**counts.deleted),
            generated_at=counts.generated_at,
            recent=[TaskEvent.from_row(r) for r in counts.recent],
        )

    @strawberry.field(description="Newest first.")
    def recent_events(self, first: int | None = 10) -> list[TaskEvent]:
        return self.recent[: max(first if first is not None else 10, 0)]
