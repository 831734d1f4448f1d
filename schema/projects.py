"""Project, its progress, and inputs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from ..db import models
from .enums import ProjectStatus

if TYPE_CHECKING:
    from .tasks import TaskConnection, TaskFilter


@strawberry.type
class ProjectProgress:
    total: int
    pending: int
    assigned: int
    running: int
    reviewing: int
    completed: int
    failed: int
    cancelled: int

    @strawberry.field(description="completed / total * 100, 0 when total is 0.")
    def percent_complete(self) -> float:
        return round(self.completed / self.total * 100, 2) if self.total else 0.0


@strawberry.type
class Project:
    row: strawberry.Private[models.Project]
    id: strawberry.ID
    name: str
    description: str | None
    status: ProjectStatus
    created_by: str | None = strawberry.field(description="The agent that created it; null when the admin did.")
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, row: models.Project) -> Project:
        return cls(
            row=row,
            id=strawberry.ID(str(row.id)),
            name=row.name,
            description=row.description,
            status=ProjectStatus(row.status),
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deleted_at=row.deleted_at,
        )

    @strawberry.field
    async def progress(self, info: strawberry.Info) -> ProjectProgress:
        counts: dict[str, int] = await info.context.loaders.project_counts.load(self.row.id)
        return ProjectProgress(
            total=sum(counts.values()),
            pending=counts.get("PENDING", 0),
            assigned=counts.get("ASSIGNED", 0),
            running=counts.get("RUNNING", 0),
            reviewing=counts.get("REVIEWING", 0),
            completed=counts.get("COMPLETED", 0),
            failed=counts.get("FAILED", 0),
            cancelled=counts.get("CANCELLED", 0),
        )

    @strawberry.field
    async def tasks(
        self,
        info: strawberry.Info,
        filter: Annotated[TaskFilter, strawberry.lazy(".tasks")] | None = None,
        first: int | None = 50,
        after: str | None = None,
    ) -> Annotated[TaskConnection, strawberry.lazy(".tasks")]:
        from .tasks import task_connection

        return await task_connection(info, filter, first, after, project_id=self.row.id)


@strawberry.input
class CreateProjectInput:
    name: str
    description: str | None = None
    status: ProjectStatus | None = ProjectStatus.ACTIVE


@strawberry.input
class UpdateProjectInput:
    name: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    status: ProjectStatus | None = strawberry.UNSET
