"""TaskEvent: one row of the log; its id is the subscription cursor."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from ..db import models
from .enums import TaskEventType, TaskStatus

if TYPE_CHECKING:
    from .tasks import Task


@strawberry.type
class TaskEvent:
    row: strawberry.Private[models.TaskEvent]
    id: strawberry.ID = strawberry.field(description="The cursor: resume a subscription with after: <id>.")
    task_id: strawberry.ID
    project_id: strawberry.ID
    type: TaskEventType
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    actor: str | None
    message: str | None
    data: JSON | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.TaskEvent) -> TaskEvent:
        return cls(
            row=row,
            id=strawberry.ID(str(row.seq)),
            task_id=strawberry.ID(str(row.task_id)),
            project_id=strawberry.ID(str(row.project_id)),
            type=TaskEventType(row.type),
            from_status=TaskStatus(row.from_status) if row.from_status else None,
            to_status=TaskStatus(row.to_status) if row.to_status else None,
            actor=row.actor,
            message=row.message,
            data=row.data,
            created_at=row.created_at,
        )

    @strawberry.field(description="The task now; null once it is deleted.")
    async def task(self, info: strawberry.Info) -> Annotated[Task, strawberry.lazy(".tasks")] | None:
        from .tasks import Task

        row = await info.context.loaders.task.load(self.row.task_id)
        return Task.from_row(row) if row is not None and row.deleted_at is None else None
