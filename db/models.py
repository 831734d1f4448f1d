"""The tables. There are no ORM relationships: foreign keys are plain id columns, and what
a caller needs is loaded explicitly (db/ queries; resolvers/loaders.py's DataLoaders batch
the nested fields of a request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, JSONType, UTCDateTime, utcnow
from .enums import AgentStatus, ProjectStatus, TaskStatus

NAME_LENGTH = 100
TITLE_LENGTH = 500
DESCRIPTION_LENGTH = 10_000


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ProjectStatus.ACTIVE.value)
    created_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))  # the agent, when one created it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = ({"sqlite_autoincrement": True},)


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    role: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    skills: Mapped[list[str]] = mapped_column(JSONType, default=list)
    capabilities: Mapped[Any | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=AgentStatus.ONLINE.value)
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Counters kept by the lifecycle so stats never scan the task table.
    claimed_count: Mapped[int] = mapped_column(Integer, default=0)
    completed_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    # When a claim last renewed the agent's leases (PostgreSQL's claim_next_task(), migration
    # 0008): a claim within a second of it renews none and reads none of its tasks. NULL on
    # SQLite, whose claim renews every lease.
    leases_renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # No index holds last_heartbeat_at, written by every agent call: the update is then
        # heap-only on PostgreSQL (fillfactor 70, migration 0007). The reaper's presence scan
        # reads the table, which holds one row per agent.
        # Never reuse the id of a deleted row: the event log and clients still refer to it.
        {"sqlite_autoincrement": True},
    )


class SkillSet(Base):
    """A distinct set of required skills. Tasks point at one, so claimNextTask can pick the
    sets an agent satisfies from this small table and never scan tasks it cannot take."""

    __tablename__ = "skill_sets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(Text, unique=True)  # sorted skills joined by "\n"
    skills: Mapped[list[str]] = mapped_column(JSONType, default=list)


READY = "status = 'PENDING' AND unmet_dependencies = 0 AND deleted_at IS NULL"
CLAIMABLE_NOW = f"{READY} AND available_at IS NULL"
CLAIMABLE_LATER = f"{READY} AND available_at IS NOT NULL"


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(TITLE_LENGTH))
    description: Mapped[str | None] = mapped_column(Text)
    task_type: Mapped[str] = mapped_column(String(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    required_skills: Mapped[list[str]] = mapped_column(JSONType, default=list)
    skill_set_id: Mapped[int] = mapped_column(ForeignKey("skill_sets.id"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    reviewer: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    acceptance_criteria: Mapped[str | None] = mapped_column(Text)
    requires_review: Mapped[bool] = mapped_column(Boolean, default=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Dependencies not COMPLETED yet: readiness kept materialised so claims never join.
    unmet_dependencies: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONType)
    summary: Mapped[str | None] = mapped_column(Text)
    feedback: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    estimated_hours: Mapped[float | None] = mapped_column(Float)
    timeout_minutes: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("priority BETWEEN 1 AND 10", name="priority_range"),
        CheckConstraint("progress IS NULL OR progress BETWEEN 0 AND 100", name="progress_range"),
        UniqueConstraint("project_id", "idempotency_key", name="uq_tasks_project_idempotency"),
        Index("ix_tasks_project_id", "project_id", "id"),
        Index("ix_tasks_parent_id", "parent_id"),
        Index("ix_tasks_assignee_status", "assignee_id", "status"),
        Index("ix_tasks_status", "status", "id"),
        # claimNextTask: only claimable candidates are in the index, in claim order, per skill set.
        Index(
            "ix_tasks_claim_order",
            "skill_set_id",
            text("priority DESC"),
            "due_at",
            "created_at",
            "id",
            postgresql_where=text(CLAIMABLE_NOW),
            sqlite_where=text(CLAIMABLE_NOW),
        ),
        # ...and the scheduled ones (availableAt, retry backoff) by time, so that a claim reads
        # only those already due, never the many that are not yet.
        Index(
            "ix_tasks_claim_scheduled",
            "skill_set_id",
            "available_at",
            postgresql_where=text(CLAIMABLE_LATER),
            sqlite_where=text(CLAIMABLE_LATER),
        ),
        # claimNextTask(projectId): the same two, per project, so that a claim for one
        # project never reads other projects' candidates (migration 0007).
        Index(
            "ix_tasks_claim_project",
            "project_id",
            "skill_set_id",
            text("priority DESC"),
            "due_at",
            "created_at",
            "id",
            postgresql_where=text(CLAIMABLE_NOW),
            sqlite_where=text(CLAIMABLE_NOW),
        ),
        Index(
            "ix_tasks_claim_project_scheduled",
            "project_id",
            "skill_set_id",
            "available_at",
            postgresql_where=text(CLAIMABLE_LATER),
            sqlite_where=text(CLAIMABLE_LATER),
        ),
        # No index holds lease_expires_at: renewing the leases of an agent's tasks (claims,
        # heartbeats, progress) is then a heap-only update on PostgreSQL, whose pages keep
        # room for it (fillfactor 90, migration 0007). The reaper reads the active tasks
        # through ix_tasks_status.
        Index("ix_tasks_deleted_at", "deleted_at"),
        {"sqlite_autoincrement": True},
    )


class TaskDependency(Base):
    """task_id depends on depends_on_id: the latter must be COMPLETED first."""

    __tablename__ = "task_dependencies"

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)

    __table_args__ = (
        CheckConstraint("task_id <> depends_on_id", name="not_self"),
        Index("ix_task_dependencies_depends_on_id", "depends_on_id", "task_id"),
    )


class TaskEvent(Base):
    """The append-only log of task changes, written in the transaction of the change.

    `id` is handed out at insert time, so ids of concurrent transactions may commit out of
    order. `seq` is the public cursor (TaskEvent.id on the API): the sequencer stamps
    committed, unstamped rows with increasing values in one short serialised transaction,
    so a reader that has seen seq N can never later find a row below N. Rows without a seq
    are invisible to `events` and subscriptions. See events/sequencer.py.
    """

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int | None] = mapped_column(BigId, unique=True)
    # No foreign keys: the log outlives hard-deleted tasks and projects.
    task_id: Mapped[int] = mapped_column(BigId)
    project_id: Mapped[int] = mapped_column(BigId)
    type: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    agent_id: Mapped[int | None] = mapped_column(BigId)  # the task's assignee at the time
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index(
            "ix_task_events_unsequenced",
            "id",
            postgresql_where=text("seq IS NULL"),
            sqlite_where=text("seq IS NULL"),
        ),
        Index("ix_task_events_task_seq", "task_id", "seq"),
        Index("ix_task_events_project_seq", "project_id", "seq"),
        {"sqlite_autoincrement": True},
    )


class TaskTypeDefault(Base):
    __tablename__ = "task_type_defaults"

    task_type: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    timeout_minutes: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)


class IdempotencyKey(Base):
    """The first result of a mutation repeated with the same key by the same caller."""

    __tablename__ = "idempotency_keys"

    caller: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class TaskCount(Base):
    """Live task counts by project and bucket, as deltas that database triggers append in the
    writing transaction (migration 0003; docs/ARCHITECTURE.md, "Task counts"): a count is the
    sum of a bucket's rows, and the reaper folds the rows into one per bucket. Buckets: the
    task's status, except READY (PENDING, no unmet dependency, no availableAt) and DELETED
    (soft-deleted, any status). Nothing in the service writes this table."""

    __tablename__ = "task_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigId)
    bucket: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigId)

    __table_args__ = (Index("ix_task_counts_project_bucket", "project_id", "bucket"),)


# Seeded by the first migration; editable afterwards.
TASK_TYPE_DEFAULTS: dict[str, tuple[int, int, int]] = {
    "research": (120, 4, 5),
    "copywrite": (60, 4, 5),
    "video": (240, 4, 5),
    "review": (30, 3, 8),
    "publish": (30, 3, 7),
    "analysis": (90, 4, 5),
    "design": (180, 4, 5),
    "development": (180, 4, 5),
    "testing": (120, 4, 5),
    "deployment": (60, 3, 7),
    "coordination": (60, 3, 6),
}
