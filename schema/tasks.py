"""Task, its connection, filter and inputs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from ..db import models
from ..db.base import utcnow
from .enums import TaskStatus

if TYPE_CHECKING:
    from .agents import Agent
    from .events import TaskEvent
    from .projects import Project


def is_ready(row: models.Task, now: datetime | None = None) -> bool:
    return (
        row.status == TaskStatus.PENDING
        and row.deleted_at is None
        and row.unmet_dependencies == 0
        and (row.available_at is None or row.available_at <= (now or utcnow()))
    )


@strawberry.type
class Task:
    row: strawberry.Private[models.Task]
    id: strawberry.ID
    title: str
    description: str | None
    task_type: str
    status: TaskStatus
    priority: int
    tags: list[str]
    required_skills: list[str]
    reviewer: str | None
    acceptance_criteria: str | None
    requires_review: bool
    attempt: int
    max_attempts: int
    progress: int | None
    progress_message: str | None
    result: JSON | None
    summary: str | None
    feedback: str | None
    last_error: str | None
    estimated_hours: float | None
    timeout_minutes: int | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    available_at: datetime | None
    assigned_at: datetime | None
    started_at: datetime | None
    submitted_at: datetime | None
    completed_at: datetime | None
    due_at: datetime | None
    lease_expires_at: datetime | None
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, row: models.Task) -> Task:
        return cls(
            row=row,
            id=strawberry.ID(str(row.id)),
            title=row.title,
            description=row.description,
            task_type=row.task_type,
            status=TaskStatus(row.status),
            priority=row.priority,
            tags=list(row.tags or []),
            required_skills=list(row.required_skills or []),
            reviewer=row.reviewer,
            acceptance_criteria=row.acceptance_criteria,
            requires_review=row.requires_review,
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            progress=row.progress,
            progress_message=row.progress_message,
            result=row.result,
            summary=row.summary,
            feedback=row.feedback,
            last_error=row.last_error,
            estimated_hours=row.estimated_hours,
            timeout_minutes=row.timeout_minutes,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            available_at=row.available_at,
            assigned_at=row.assigned_at,
            started_at=row.started_at,
            submitted_at=row.submitted_at,
            completed_at=row.completed_at,
            due_at=row.due_at,
            lease_expires_at=row.lease_expires_at,
            deleted_at=row.deleted_at,
        )

    @strawberry.field
    async def project(self, info: strawberry.Info) -> Annotated[Project, strawberry.lazy(".projects")]:
        from .projects import Project

        return Project.from_row(await info.context.loaders.project.load(self.row.project_id))

    @strawberry.field
    async def assignee(self, info: strawberry.Info) -> Annotated[Agent, strawberry.lazy(".agents")] | None:
        from .agents import Agent

        if self.row.assignee_id is None:
            return None
        row = await info.context.loaders.agent.load(self.row.assignee_id)
        return Agent.from_row(row) if row is not None else None

    @strawberry.field
    async def parent(self, info: strawberry.Info) -> Task | None:
        if self.row.parent_id is None:
            return None
        row = await info.context.loaders.task.load(self.row.parent_id)
        return Task.from_row(row) if row is not None and row.deleted_at is None else None

    @strawberry.field
    async def subtasks(self, info: strawberry.Info) -> list[Task]:
        return [Task.from_row(r) for r in await info.context.loaders.subtasks.load(self.row.id)]

    @strawberry.field(description="Tasks that must be COMPLETED before this one can be claimed.")
    async def dependencies(self, info: strawberry.Info) -> list[Task]:
        return [Task.from_row(r) for r in await info.context.loaders.dependencies.load(self.row.id)]

    @strawberry.field
    async def dependents(self, info: strawberry.Info) -> list[Task]:
        return [Task.from_row(r) for r in await info.context.loaders.dependents.load(self.row.id)]

    @strawberry.field(description="PENDING, all dependencies COMPLETED, availableAt reached.")
    def ready(self) -> bool:
        return is_ready(self.row)

    @strawberry.field(description="The dependencies that are not COMPLETED yet.")
    async def blocked_by(self, info: strawberry.Info) -> list[Task]:
        if self.row.unmet_dependencies == 0:
            return []
        rows = await info.context.loaders.dependencies.load(self.row.id)
        return [Task.from_row(r) for r in rows if r.status != TaskStatus.COMPLETED]

    @strawberry.field(description="This task's events, oldest first.")
    async def events(
        self, info: strawberry.Info, first: int | None = 100
    ) -> list[Annotated[TaskEvent, strawberry.lazy(".events")]]:
        from .events import TaskEvent

        first = info.context.page_size(first, default=100)
        rows = await info.context.loaders.events.load((self.row.id, first))
        return [TaskEvent.from_row(r) for r in rows]


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class TaskConnection:
    nodes: list[Task]
    page_info: PageInfo
    total_count: int


@strawberry.input
class TaskFilter:
    project_id: strawberry.ID | None = None
    status: list[TaskStatus] | None = None
    assignee: str | None = None
    task_type: str | None = None
    tags: list[str] | None = strawberry.field(default=None, description="Tasks having any of these tags.")
    search: str | None = strawberry.field(
        default=None, description="Case-insensitive substring of title or description."
    )
    ready_only: bool | None = None
    include_deleted: bool | None = False


@strawberry.input
class CreateTaskInput:
    title: str
    task_type: str
    project_id: strawberry.ID | None = None
    ref: str | None = None
    description: str | None = None
    priority: int | None = None
    tags: list[str] | None = None
    required_skills: list[str] | None = None
    assignee: str | None = None
    reviewer: str | None = None
    acceptance_criteria: str | None = None
    requires_review: bool | None = True
    parent_id: strawberry.ID | None = None
    depends_on: list[strawberry.ID] | None = None
    depends_on_refs: list[str] | None = None
    max_attempts: int | None = None
    estimated_hours: float | None = None
    timeout_minutes: int | None = None
    available_at: datetime | None = None
    due_at: datetime | None = None
    created_by: str | None = None
    idempotency_key: str | None = None


@strawberry.input
class UpdateTaskInput:
    title: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    priority: int | None = strawberry.UNSET
    tags: list[str] | None = strawberry.UNSET
    required_skills: list[str] | None = strawberry.UNSET
    reviewer: str | None = strawberry.UNSET
    acceptance_criteria: str | None = strawberry.UNSET
    max_attempts: int | None = strawberry.UNSET
    timeout_minutes: int | None = strawberry.UNSET
    available_at: datetime | None = strawberry.UNSET
    due_at: datetime | None = strawberry.UNSET
