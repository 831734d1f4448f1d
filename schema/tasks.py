"""Task, its connection, filter and inputs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from ..db import agents as db_agents
from ..db import models
from ..db import tasks as db_tasks
from ..db.base import utcnow
from . import validate
from .enums import TaskStatus
from .inputs import plain_input

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


async def _criteria(
    info: strawberry.Info, f: TaskFilter | None, *, project_id: int | None = None
) -> db_tasks.TaskCriteria | None:
    """The filter as TaskCriteria, or None when it cannot match anything (unknown agent)."""
    f = f or TaskFilter()
    q = db_tasks.TaskCriteria(
        project_id=project_id if project_id is not None else validate.optional_id(f.project_id, "filter.projectId"),
        statuses=[s.value for s in f.status] if f.status else None,
        task_type=f.task_type,
        tags=validate.labels(f.tags, "filter.tags"),
        search=validate.text(f.search, "filter.search", limit=200),
        ready_only=bool(f.ready_only),
        include_deleted=bool(f.include_deleted),
    )
    if f.assignee is not None:
        async with info.context.services.read() as session:
            agent = await db_agents.get_agent(session, f.assignee)
        if agent is None:
            return None
        q.assignee_id = agent.id
    return q


async def task_connection(
    info: strawberry.Info, f: TaskFilter | None, first: int | None, after: str | None, *, project_id: int | None = None
) -> TaskConnection:
    first = info.context.page_size(first)
    after_id = validate.decode_cursor(after)
    q = await _criteria(info, f, project_id=project_id)
    if q is None:
        return TaskConnection(nodes=[], page_info=PageInfo(has_next_page=False, end_cursor=None), total_count=0)
    async with info.context.services.read() as session:
        rows, more, total = await db_tasks.list_tasks(session, q, first=first, after_id=after_id)
    end = validate.encode_cursor(rows[-1].id) if rows else None
    return TaskConnection(
        nodes=[Task.from_row(r) for r in rows],
        page_info=PageInfo(has_next_page=more, end_cursor=end),
        total_count=total,
    )


@plain_input
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
