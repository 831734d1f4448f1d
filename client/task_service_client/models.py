"""Typed results: plain dataclasses built from the server's JSON.

Field names are the contract's in snake_case; `to_json` gives them back in the contract's
camelCase (what `taskctl` prints). Nested objects are flattened where an agent needs only
an id or a name (`Task.project_id`, `Task.assignee`, `Task.blocked_by`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _ids(items: Any) -> list[str]:
    return [str(item["id"]) for item in items or []]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_json(value: Any) -> Any:
    """A dataclass (or list/dict of them) as JSON-ready data with the contract's camelCase names."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_camel(f.name): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Task:
    id: str
    project_id: str
    title: str
    task_type: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    ready: bool
    requires_review: bool
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    required_skills: list[str] = field(default_factory=list)
    assignee: str | None = None
    reviewer: str | None = None
    acceptance_criteria: str | None = None
    parent_id: str | None = None
    dependencies: list[str] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)
    progress: int | None = None
    progress_message: str | None = None
    result: Any = None
    summary: str | None = None
    feedback: str | None = None
    last_error: str | None = None
    estimated_hours: float | None = None
    timeout_minutes: int | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    available_at: datetime | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    due_at: datetime | None = None
    lease_expires_at: datetime | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(
            id=str(d["id"]),
            project_id=str((d.get("project") or {}).get("id", "")),
            title=d["title"],
            task_type=d["taskType"],
            status=d["status"],
            priority=d["priority"],
            attempt=d["attempt"],
            max_attempts=d["maxAttempts"],
            ready=d["ready"],
            requires_review=d["requiresReview"],
            description=d.get("description"),
            tags=list(d.get("tags") or []),
            required_skills=list(d.get("requiredSkills") or []),
            assignee=(d.get("assignee") or {}).get("name"),
            reviewer=d.get("reviewer"),
            acceptance_criteria=d.get("acceptanceCriteria"),
            parent_id=(d.get("parent") or {}).get("id"),
            dependencies=_ids(d.get("dependencies")),
            blocked_by=_ids(d.get("blockedBy")),
            progress=d.get("progress"),
            progress_message=d.get("progressMessage"),
            result=d.get("result"),
            summary=d.get("summary"),
            feedback=d.get("feedback"),
            last_error=d.get("lastError"),
            estimated_hours=d.get("estimatedHours"),
            timeout_minutes=d.get("timeoutMinutes"),
            created_by=d.get("createdBy"),
            created_at=_time(d.get("createdAt")),
            updated_at=_time(d.get("updatedAt")),
            available_at=_time(d.get("availableAt")),
            assigned_at=_time(d.get("assignedAt")),
            started_at=_time(d.get("startedAt")),
            submitted_at=_time(d.get("submittedAt")),
            completed_at=_time(d.get("completedAt")),
            due_at=_time(d.get("dueAt")),
            lease_expires_at=_time(d.get("leaseExpiresAt")),
        )


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    total_count: int
    has_next_page: bool
    end_cursor: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskPage:
        return cls(
            tasks=[Task.from_dict(t) for t in d["nodes"]],
            total_count=d["totalCount"],
            has_next_page=d["pageInfo"]["hasNextPage"],
            end_cursor=d["pageInfo"].get("endCursor"),
        )


@dataclass(frozen=True)
class AgentStats:
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    success_rate: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentStats:
        return cls(d["totalTasks"], d["completedTasks"], d["failedTasks"], d["successRate"])


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    status: str
    max_concurrent_tasks: int
    role: str | None = None
    skills: list[str] = field(default_factory=list)
    capabilities: Any = None
    last_heartbeat_at: datetime | None = None
    registered_at: datetime | None = None
    current_tasks: list[str] = field(default_factory=list)
    stats: AgentStats | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Agent:
        return cls(
            id=str(d["id"]),
            name=d["name"],
            status=d["status"],
            max_concurrent_tasks=d["maxConcurrentTasks"],
            role=d.get("role"),
            skills=list(d.get("skills") or []),
            capabilities=d.get("capabilities"),
            last_heartbeat_at=_time(d.get("lastHeartbeatAt")),
            registered_at=_time(d.get("registeredAt")),
            current_tasks=_ids(d.get("currentTasks")),
            stats=AgentStats.from_dict(d["stats"]) if d.get("stats") else None,
        )


@dataclass(frozen=True)
class Registration:
    agent: Agent
    token: str | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Registration:
        return cls(agent=Agent.from_dict(d["agent"]), token=d.get("token"))


@dataclass(frozen=True)
class ProjectProgress:
    total: int
    pending: int
    assigned: int
    running: int
    reviewing: int
    completed: int
    failed: int
    cancelled: int
    percent_complete: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectProgress:
        return cls(
            d["total"],
            d["pending"],
            d["assigned"],
            d["running"],
            d["reviewing"],
            d["completed"],
            d["failed"],
            d["cancelled"],
            d["percentComplete"],
        )


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    status: str
    description: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    progress: ProjectProgress | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Project:
        return cls(
            id=str(d["id"]),
            name=d["name"],
            status=d["status"],
            description=d.get("description"),
            created_at=_time(d.get("createdAt")),
            updated_at=_time(d.get("updatedAt")),
            progress=ProjectProgress.from_dict(d["progress"]) if d.get("progress") else None,
        )


@dataclass(frozen=True)
class TaskEvent:
    id: str
    task_id: str
    project_id: str
    type: str
    from_status: str | None = None
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None
    data: Any = None
    created_at: datetime | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskEvent:
        return cls(
            id=str(d["id"]),
            task_id=str(d["taskId"]),
            project_id=str(d["projectId"]),
            type=d["type"],
            from_status=d.get("fromStatus"),
            to_status=d.get("toStatus"),
            actor=d.get("actor"),
            message=d.get("message"),
            data=d.get("data"),
            created_at=_time(d.get("createdAt")),
        )


@dataclass(frozen=True)
class DashboardStats:
    """The counters of dashboardStats as nested dicts (`tasks`, `agents`, `projects`, `deleted`)."""

    projects: dict[str, int]
    tasks: dict[str, int]
    agents: dict[str, int]
    deleted: dict[str, int]
    recent_events: list[TaskEvent]
    generated_at: datetime | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DashboardStats:
        return cls(
            projects=dict(d["projects"]),
            tasks=dict(d["tasks"]),
            agents=dict(d["agents"]),
            deleted=dict(d["deleted"]),
            recent_events=[TaskEvent.from_dict(e) for e in d.get("recentEvents") or []],
            generated_at=_time(d.get("generatedAt")),
        )
