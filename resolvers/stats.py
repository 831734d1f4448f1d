"""dashboardStats (GraphQL and the plain JSON of /dashboard/stats) and the events query."""

from __future__ import annotations

from typing import Any

import strawberry

from ..db import events as db_events
from ..db import stats as db_stats
from ..schema import validate
from ..schema.events import TaskEvent
from ..schema.stats import DashboardStats
from ..services import Services
from .context import Context

Info = strawberry.Info[Context, None]


async def compute_stats(services: Services, project_id: int | None) -> DashboardStats:
    async with services.read() as session:
        counts = await db_stats.dashboard_counts(session, project_id)
    return DashboardStats.from_counts(counts)


async def dashboard_stats_json(services: Services, project_id: str | None) -> dict[str, Any]:
    """The same numbers as the dashboardStats query, as plain JSON for curl and scripts."""
    stats = await compute_stats(services, validate.optional_id(project_id, "projectId"))
    return {
        "projects": vars(stats.projects),
        "tasks": vars(stats.tasks),
        "agents": vars(stats.agents),
        "deleted": vars(stats.deleted),
        "recentEvents": [
            {
                "id": e.id,
                "taskId": e.task_id,
                "projectId": e.project_id,
                "type": e.type.value,
                "fromStatus": e.from_status.value if e.from_status else None,
                "toStatus": e.to_status.value if e.to_status else None,
                "actor": e.actor,
                "message": e.message,
                "createdAt": e.created_at.isoformat(),
            }
            for e in stats.recent[:10]
        ],
        "generatedAt": stats.generated_at.isoformat(),
    }


@strawberry.type
class StatsQuery:
    @strawberry.field
    async def dashboard_stats(self, info: Info, project_id: strawberry.ID | None = None) -> DashboardStats:
        return await compute_stats(info.context.services, validate.optional_id(project_id, "projectId"))

    @strawberry.field(description="Stored events with id > after, oldest first.")
    async def events(
        self,
        info: Info,
        after: strawberry.ID | None = None,
        project_id: strawberry.ID | None = None,
        task_id: strawberry.ID | None = None,
        first: int | None = 100,
    ) -> list[TaskEvent]:
        limit = info.context.page_size(first, default=100)
        cursor = 0 if after in (None, "0") else validate.parse_id(after, "after")
        async with info.context.services.read() as session:
            rows = await db_events.list_events(
                session,
                after=cursor,
                project_id=validate.optional_id(project_id, "projectId"),
                task_id=validate.optional_id(task_id, "taskId"),
                limit=limit,
            )
        return [TaskEvent.from_row(r) for r in rows]
