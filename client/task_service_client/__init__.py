"""Task Service client: a typed async SDK (with a sync wrapper), the `taskctl` command,
a worker loop and an MCP server for agents. Imports nothing of the server."""

from .client import RetryPolicy, TaskServiceClient
from .config import Config
from .errors import (
    BadUserInputError,
    ConfigurationError,
    ConflictError,
    CycleDetectedError,
    DependenciesNotMetError,
    ForbiddenError,
    InternalError,
    InvalidTransitionError,
    LimitReachedError,
    NotFoundError,
    QueryTooComplexError,
    RateLimitedError,
    StaleAttemptError,
    TaskServiceError,
    TransportFailure,
    UnauthenticatedError,
)
from .models import Agent, DashboardStats, Project, ProjectProgress, Registration, Task, TaskEvent, TaskPage
from .sync import SyncTaskServiceClient

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "BadUserInputError",
    "Config",
    "ConfigurationError",
    "ConflictError",
    "CycleDetectedError",
    "DashboardStats",
    "DependenciesNotMetError",
    "ForbiddenError",
    "InternalError",
    "InvalidTransitionError",
    "LimitReachedError",
    "NotFoundError",
    "Project",
    "ProjectProgress",
    "QueryTooComplexError",
    "RateLimitedError",
    "Registration",
    "RetryPolicy",
    "StaleAttemptError",
    "SyncTaskServiceClient",
    "Task",
    "TaskEvent",
    "TaskPage",
    "TaskServiceClient",
    "TaskServiceError",
    "TransportFailure",
    "UnauthenticatedError",
]
