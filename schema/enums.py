"""The contract's enums, exposed from the domain's own enum classes.

strawberry.enum registers a class in place and returns it, so these are the classes of
db/enums.py and errors.py themselves; the type checker is told so directly."""

from typing import TYPE_CHECKING

import strawberry

from ..db import enums
from ..errors import ErrorCode as _ErrorCode

if TYPE_CHECKING:
    from ..db.enums import AgentStatus, ProjectStatus, TaskEventType, TaskStatus
    from ..errors import ErrorCode
else:
    TaskStatus = strawberry.enum(enums.TaskStatus)
    AgentStatus = strawberry.enum(enums.AgentStatus)
    ProjectStatus = strawberry.enum(enums.ProjectStatus)
    TaskEventType = strawberry.enum(enums.TaskEventType)
    ErrorCode = strawberry.enum(_ErrorCode)

__all__ = ["AgentStatus", "ErrorCode", "ProjectStatus", "TaskEventType", "TaskStatus"]
