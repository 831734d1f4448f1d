"""The contract's enums, exposed from the domain's own enum classes."""

import strawberry

from ..db import enums
from ..errors import ErrorCode as _ErrorCode

TaskStatus = strawberry.enum(enums.TaskStatus)
AgentStatus = strawberry.enum(enums.AgentStatus)
ProjectStatus = strawberry.enum(enums.ProjectStatus)
TaskEventType = strawberry.enum(enums.TaskEventType)
ErrorCode = strawberry.enum(_ErrorCode)
