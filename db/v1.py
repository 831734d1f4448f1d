"""Converting the v1 REST service's database in place (`task-service migrate`, PostgreSQL).

The v1 tables are renamed v1_* and kept, with what has no place in the new model (Discord
ids, agent channels, reviewer mentions, REST idempotency responses). Revision 0001's tables
are created beside them and filled from them, keeping every id; then the usual migrations
run to head, so later revisions upgrade converted data like any other. Everything runs in
the caller's transaction (db/migrate.py): a failure leaves the v1 database untouched.

Like a migration, the SQL here is written against revision 0001's tables, never the models.
It is synchronous because Alembic is: it runs on the migration's connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from .base import dialect_name

CONVERTED_AT = "0001"
V1_TABLES = ("projects", "tasks", "task_logs", "agents", "agent_channels", "task_type_defaults", "idempotency_keys")
V1_STATUSES = ("pending", "assigned", "running", "reviewing", "completed", "failed", "cancelled", "rejected")
REPORT_LIMIT = 20  # lines per kind of finding; the rest are counted

# A v1 log's action, else its new status, names the event type.
_ACTIONS = {
    "CREATED": ("created", "create"),
    "UPDATED": ("updated", "update", "edited"),
    "CLAIMED": ("assigned", "assign", "claimed", "claim"),
    "STARTED": ("started", "start"),
    "PROGRESS": ("progress",),
    "SUBMITTED": ("submitted", "submit"),
    "APPROVED": ("approved", "approve", "completed", "complete"),
    "REJECTED": ("rejected", "reject"),
    "RELEASED": ("released", "release", "unassigned"),
    "FAILED": ("failed", "fail"),
    "RETRIED": ("retried", "retry"),
    "CANCELLED": ("cancelled", "canceled", "cancel"),
    "TIMED_OUT": ("timeout", "timed_out", "timedout"),
    "DELETED": ("deleted", "delete"),
    "RESTORED": ("restored", "restore"),
}
_BY_NEW_STATUS = {
    "assigned": "CLAIMED",
    "running": "STARTED",
    "reviewing": "SUBMITTED",
    "completed": "APPROVED",
    "failed": "FAILED",
    "cancelled": "CANCELLED",
    "rejected": "REJECTED",
}


class V1ConversionError(Exception):
    """The v1 data holds something the conversion cannot place; the message says what to fix."""


@dataclass(frozen=True)
class V1Defaults:
    """Settings the conversion needs for what v1 did not have."""

    lease_seconds: float = 90
    max_concurrent_tasks: int = 3
    default_max_attempts: int = 4
    default_timeout_minutes: int = 120
    soft_delete_retention_days: float = 30


_DETECT = """
    SELECT count(*) FROM information_schema.columns
    WHERE table_schema = current_schema()
      AND ((table_name = 'tasks' AND column_name = 'assignee_agent')
        OR (table_name = 'task_logs' AND column_name = 'action'))
"""
_HAS_ALEMBIC = "SELECT to_regclass('alembic_version') IS NOT NULL"


async def looks_like_v1(session: AsyncSession) -> bool:
    """The database has the v1 service's tasks and task_logs tables (PostgreSQL only)."""
    if dialect_name(session) != "postgresql":
        return False
    return bool((await session.scalar(text(_DETECT))) == 2)


def is_v1_sync(connection: Connection) -> bool:
    """A v1 database not converted yet: v1 tables and no alembic_version."""
    if connection.execute(text(_HAS_ALEMBIC)).scalar():
        return False
    return connection.execute(text(_DETECT)).scalar() == 2


def convert(connection: Connection, upgrade_to: Callable[[str], None], defaults: V1Defaults) -> list[str]:
    """Rename the v1 tables, build revision 0001 with `upgrade_to`, fill it; returns the report."""
    sql = _Runner(connection)
    renamed = _rename_v1_tables(sql)
    upgrade_to(CONVERTED_AT)
    report: list[str] = []
    params = {
        "lease": defaults.lease_seconds,
        "max_tasks": defaults.max_concurrent_tasks,
        "max_attempts": defaults.default_max_attempts,
        "timeout": defaults.default_timeout_minutes,
    }
    projects = sql.run(_PROJECTS).rowcount
    report += _findings(sql, "SELECT id, name FROM v1_projects WHERE length(name) > 100 ORDER BY id", _long_name)
    agents = sql.run(_AGENTS, params).rowcount
    _continue_ids(sql, "agents", "v1_agents")
    created = [row.name for row in sql.run(_MISSING_AGENTS, params)]
    report += _limited([f"created agent '{name}': an assignee missing from v1's agents" for name in created])
    sql.run(_TASK_TYPES, params)
    _check_statuses(sql)
    skill_set = sql.run(_EMPTY_SKILL_SET).scalar_one()
    tasks = sql.run(_TASKS, {**params, "skill_set": skill_set}).rowcount
    report += _findings(sql, _UNASSIGNED_ACTIVE, _requeued)
    report += _findings(sql, _REJECTED, _rejected)
    report += _findings(sql, _DANGLING, _dangling)
    dependencies = sql.run(_DEPENDENCIES).rowcount
    sql.run(_UNMET)
    statuses = {"old": _status_sql("l.old_status"), "new": _status_sql("l.new_status")}
    events = sql.run(_EVENTS.format(type=_event_type_sql(), **statuses)).rowcount
    orphans = sql.run(_ORPHAN_LOGS).scalar_one()
    if orphans:
        report.append(f"skipped {orphans} log entries of tasks that no longer exist")
    for table, v1_table in (("projects", "v1_projects"), ("tasks", "v1_tasks"), ("task_events", "v1_task_logs")):
        _continue_ids(sql, table, v1_table)
    deleted = sql.run("SELECT count(*) FROM tasks WHERE deleted_at IS NOT NULL").scalar_one()
    expired = sql.run(_EXPIRED_DELETIONS, {"days": defaults.soft_delete_retention_days}).scalar_one()
    if expired:
        report.append(
            f"{expired} rows were soft-deleted more than SOFT_DELETE_RETENTION_DAYS "
            f"({defaults.soft_delete_retention_days:g}) ago: the reaper erases them at its first pass "
            "(they stay in the v1_* tables)"
        )
    summary = (
        f"converted the v1 database: {projects} projects, {tasks} tasks ({deleted} soft-deleted), "
        f"{dependencies} dependencies, {events} log entries as task events, {agents + len(created)} agents; "
        "ids kept, new ids continue after them"
    )
    kept = ", ".join(f"v1_{table}" for table in renamed)
    return [
        summary,
        *report,
        f"kept the v1 tables as {kept} (Discord ids and channels are there); drop them when no longer needed",
        "agents are OFFLINE until they register again (registerAgent gives each its new token)",
    ]


class _Runner:
    def __init__(self, connection: Connection):
        self.connection = connection

    def run(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.connection.execute(text(sql), params or {})


def _rename_v1_tables(sql: _Runner) -> list[str]:
    """v1's tables, sequences and indexes get a v1_ prefix, out of the new schema's way."""
    renamed = []
    for table in V1_TABLES:
        if not sql.run("SELECT to_regclass(:t) IS NOT NULL", {"t": table}).scalar():
            continue
        if sql.run("SELECT to_regclass(:t) IS NOT NULL", {"t": f"v1_{table}"}).scalar():
            raise V1ConversionError(f"both {table} and v1_{table} exist: rename or drop v1_{table} first")
        sql.run(f'ALTER TABLE "{table}" RENAME TO "v1_{table}"')
        owned = sql.run(_OWNED_SEQUENCES, {"t": f"v1_{table}"}).scalars().all()
        indexes = sql.run(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t",
            {"t": f"v1_{table}"},
        ).scalars()
        for kind, name in [("SEQUENCE", s) for s in owned] + [("INDEX", i) for i in indexes]:
            if not name.startswith("v1_"):
                sql.run(f'ALTER {kind} "{name}" RENAME TO "{("v1_" + name)[:63]}"')
        renamed.append(table)
    return renamed


def _continue_ids(sql: _Runner, table: str, v1_table: str) -> None:
    """New ids start after the highest v1 ever handed out (rows deleted in v1 included)."""
    v1_sequence = sql.run("SELECT pg_get_serial_sequence(:t, 'id')", {"t": v1_table}).scalar()
    last = 0
    if v1_sequence is not None:
        last = sql.run(
            f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {v1_sequence}"
        ).scalar()
    sql.run(_SET_SEQUENCE.format(table=table), {"last": last})


def _check_statuses(sql: _Runner) -> None:
    bad = sql.run(
        "SELECT id, status FROM v1_tasks WHERE status IS NULL OR lower(status) <> ALL(:known) ORDER BY id LIMIT 5",
        {"known": list(V1_STATUSES)},
    ).all()
    if bad:
        listed = ", ".join(f"task {row.id} ({row.status!r})" for row in bad)
        raise V1ConversionError(
            f"v1 tasks with a status the new lifecycle cannot place: {listed}; set them to one of "
            f"{', '.join(V1_STATUSES)} in the v1 database and run `task-service migrate` again"
        )


def _findings(sql: _Runner, query: str, line: Callable[[Any], str]) -> list[str]:
    return _limited([line(row) for row in sql.run(query)])


def _limited(lines: list[str]) -> list[str]:
    if len(lines) <= REPORT_LIMIT:
        return lines
    return [*lines[:REPORT_LIMIT], f"... and {len(lines) - REPORT_LIMIT} more like these"]


def _long_name(row: Any) -> str:
    return f"project {row.id}: name cut to 100 characters (the full name stays in v1_projects)"


def _requeued(row: Any) -> str:
    return f"task {row.id} was {row.status} without an assignee: back to PENDING"


def _rejected(row: Any) -> str:
    return f"task {row.id} was rejected: now {row.new_status} (attempt {row.attempt} of {row.max_attempts})"


def _dangling(row: Any) -> str:
    reason = "itself" if row.task_id == row.depends_on_id else f"task {row.depends_on_id}, which no longer exists"
    return f"skipped the dependency of task {row.task_id} on {reason}"


def _status_sql(column: str) -> str:
    """A v1 status as a new TaskStatus; NULL where there is none (v1's 'rejected')."""
    known = ", ".join(f"'{status}'" for status in V1_STATUSES if status != "rejected")
    return f"CASE WHEN lower({column}) IN ({known}) THEN upper({column}) END"


def _event_type_sql() -> str:
    by_action = " ".join(
        f"WHEN lower(l.action) IN ({', '.join(repr(a) for a in actions)}) THEN '{event}'"
        for event, actions in _ACTIONS.items()
    )
    by_status = " ".join(
        f"WHEN lower(l.new_status) = '{status}' THEN '{event}'" for status, event in _BY_NEW_STATUS.items()
    )
    return f"CASE {by_action} {by_status} ELSE 'UPDATED' END"


_OWNED_SEQUENCES = """
    SELECT s.relname FROM pg_class s
    JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')
    JOIN pg_class t ON t.oid = d.refobjid
    WHERE s.relkind = 'S' AND t.relname = :t
"""

_SET_SEQUENCE = """
    SELECT setval(pg_get_serial_sequence('{table}', 'id'), greatest(coalesce(max(id), 0), :last) + 1, false)
    FROM {table}
"""

_UTC = "AT TIME ZONE 'UTC'"

_PROJECTS = f"""
    INSERT INTO projects (id, name, description, status, created_at, updated_at, deleted_at)
    SELECT id, left(name, 100), description,
           CASE WHEN lower(status) IN ('active', 'paused', 'completed', 'cancelled') THEN upper(status)
                ELSE 'ACTIVE' END,
           coalesce(created_at {_UTC}, now()),
           coalesce(updated_at {_UTC}, created_at {_UTC}, now()),
           deleted_at {_UTC}
    FROM v1_projects
"""

# Arrays of text as JSON arrays, without the NULL and empty elements the API cannot show.
_JSON_LIST = """(SELECT coalesce(jsonb_agg(item ORDER BY n), '[]'::jsonb)
                 FROM unnest({column}) WITH ORDINALITY AS u(item, n) WHERE coalesce(item, '') <> '')"""

_AGENTS = f"""
    INSERT INTO agents (id, name, role, skills, capabilities, status, max_concurrent_tasks, last_heartbeat_at,
                        registered_at, deleted_at, token_hash, claimed_count, completed_count, failed_count)
    SELECT id, name, left(role, 100), {_JSON_LIST.format(column="skills")}, capabilities, 'OFFLINE',
           CAST(:max_tasks AS integer), last_heartbeat {_UTC}, coalesce(created_at {_UTC}, now()),
           deleted_at {_UTC}, NULL,
           coalesce(total_tasks, 0), coalesce(completed_tasks, 0), coalesce(failed_tasks, 0)
    FROM v1_agents
"""

_MISSING_AGENTS = """
    INSERT INTO agents (name, skills, status, max_concurrent_tasks, registered_at,
                        claimed_count, completed_count, failed_count)
    SELECT DISTINCT t.assignee_agent, '[]'::jsonb, 'OFFLINE', CAST(:max_tasks AS integer), now(), 0, 0, 0
    FROM v1_tasks t
    WHERE coalesce(t.assignee_agent, '') <> ''
      AND NOT EXISTS (SELECT 1 FROM v1_agents a WHERE a.name = t.assignee_agent)
    ORDER BY t.assignee_agent
    RETURNING name
"""

_TASK_TYPES = """
    INSERT INTO task_type_defaults (task_type, timeout_minutes, max_attempts, priority)
    SELECT left(v.task_type, 100),
           coalesce(v.timeout_minutes, d.timeout_minutes, CAST(:timeout AS integer)),
           coalesce(v.max_retries + 1, d.max_attempts, CAST(:max_attempts AS integer)),
           greatest(1, least(10, coalesce(v.priority, d.priority, 5)))
    FROM v1_task_type_defaults v LEFT JOIN task_type_defaults d ON d.task_type = v.task_type
    ON CONFLICT (task_type) DO UPDATE SET timeout_minutes = excluded.timeout_minutes,
        max_attempts = excluded.max_attempts, priority = excluded.priority
"""

_EMPTY_SKILL_SET = """
    WITH made AS (INSERT INTO skill_sets (key, skills) VALUES ('', '[]'::jsonb)
                  ON CONFLICT (key) DO NOTHING RETURNING id)
    SELECT id FROM made UNION ALL SELECT id FROM skill_sets WHERE key = ''
"""

# Each v1 task with what the new model needs: its agent, attempts so far (v1 counted
# retries: a task that was tried has attempt = retries + 1) and its new status, where a
# rejected task follows the new rejection rule: PENDING while attempts remain, else FAILED.
_V1_TASKS = """
    SELECT t.*, a.id AS agent_id, lower(t.status) AS v1_status,
           CASE lower(t.status)
               WHEN 'pending' THEN coalesce(t.retry_count, 0)
               WHEN 'cancelled' THEN coalesce(t.retry_count, 0) + (t.assigned_at IS NOT NULL)::int
               ELSE coalesce(t.retry_count, 0) + 1
           END AS attempt,
           greatest(coalesce(t.max_retries + 1, d.max_attempts, CAST(:max_attempts AS integer)), 1) AS max_attempts,
           r.name AS reviewer_name
    FROM v1_tasks t
    LEFT JOIN agents a ON a.name = t.assignee_agent
    LEFT JOIN task_type_defaults d ON d.task_type = t.task_type
    LEFT JOIN v1_agents r ON r.name = t.reviewer_id
"""

_NEW_STATUS = """
    CASE
        WHEN v1_status IN ('assigned', 'running') AND agent_id IS NULL THEN 'PENDING'
        WHEN v1_status = 'rejected' THEN CASE WHEN attempt < max_attempts THEN 'PENDING' ELSE 'FAILED' END
        ELSE upper(v1_status)
    END
"""

_TASKS = f"""
    WITH v1 AS ({_V1_TASKS}), mapped AS (SELECT v1.*, {_NEW_STATUS} AS new_status FROM v1)
    INSERT INTO tasks (id, project_id, parent_id, title, description, task_type, status, priority, tags,
                       required_skills, skill_set_id, assignee_id, reviewer, acceptance_criteria, requires_review,
                       attempt, max_attempts, unmet_dependencies, result, feedback, last_error, estimated_hours,
                       timeout_minutes, created_by, created_at, updated_at, assigned_at, started_at,
                       completed_at, due_at, lease_expires_at, deleted_at)
    SELECT id, project_id, parent_task_id, coalesce(title, '(untitled)'), description,
           left(coalesce(nullif(task_type, ''), 'general'), 100), new_status,
           greatest(1, least(10, coalesce(priority, 5))), {_JSON_LIST.format(column="task_tags")}, '[]'::jsonb,
           CAST(:skill_set AS bigint), CASE WHEN new_status = 'PENDING' THEN NULL ELSE agent_id END, reviewer_name,
           acceptance_criteria, true, attempt, max_attempts, 0, result, feedback,
           CASE WHEN v1_status = 'rejected' AND new_status = 'FAILED'
                THEN rtrim('rejected on the last attempt (' || attempt || '/' || max_attempts || '): '
                           || coalesce(feedback, ''), ': ') END,
           estimated_hours, timeout_minutes, left(created_by, 100),
           coalesce(created_at {_UTC}, now()), coalesce(updated_at {_UTC}, created_at {_UTC}, now()),
           assigned_at {_UTC}, started_at {_UTC}, completed_at {_UTC}, due_at {_UTC},
           CASE WHEN new_status IN ('ASSIGNED', 'RUNNING')
                THEN now() + make_interval(secs => CAST(:lease AS float8)) END,
           deleted_at {_UTC}
    FROM mapped
"""

_UNASSIGNED_ACTIVE = """
    SELECT t.id, upper(t.status) AS status FROM v1_tasks t
    WHERE lower(t.status) IN ('assigned', 'running') AND coalesce(t.assignee_agent, '') = ''
    ORDER BY t.id
"""

_REJECTED = """
    SELECT t.id, n.status AS new_status, n.attempt, n.max_attempts
    FROM v1_tasks t JOIN tasks n ON n.id = t.id WHERE lower(t.status) = 'rejected' ORDER BY t.id
"""

_WANTED_DEPENDENCIES = """
    SELECT DISTINCT t.id AS task_id, dep AS depends_on_id
    FROM v1_tasks t CROSS JOIN LATERAL unnest(t.dependencies) AS dep WHERE dep IS NOT NULL
"""

_DANGLING = f"""
    SELECT w.task_id, w.depends_on_id FROM ({_WANTED_DEPENDENCIES}) w
    WHERE w.task_id = w.depends_on_id OR NOT EXISTS (SELECT 1 FROM v1_tasks t WHERE t.id = w.depends_on_id)
    ORDER BY w.task_id, w.depends_on_id
"""

_DEPENDENCIES = f"""
    INSERT INTO task_dependencies (task_id, depends_on_id)
    SELECT w.task_id, w.depends_on_id FROM ({_WANTED_DEPENDENCIES}) w
    WHERE w.task_id <> w.depends_on_id AND EXISTS (SELECT 1 FROM v1_tasks t WHERE t.id = w.depends_on_id)
"""

_UNMET = """
    UPDATE tasks SET unmet_dependencies = blocked.n
    FROM (SELECT d.task_id, count(*) AS n FROM task_dependencies d JOIN tasks dep ON dep.id = d.depends_on_id
          WHERE dep.status <> 'COMPLETED' GROUP BY d.task_id) AS blocked
    WHERE tasks.id = blocked.task_id
"""

# Log entries become events in their order, stamped with cursors 1..N; agent_id is the
# actor's when the actor names an agent (what taskEvents(agent:) filters on).
_EVENTS = f"""
    INSERT INTO task_events (id, seq, task_id, project_id, type, from_status, to_status, actor, agent_id,
                             message, data, created_at)
    SELECT l.id, row_number() OVER (ORDER BY l.created_at NULLS FIRST, l.id), l.task_id, t.project_id,
           {{type}}, {{old}}, {{new}}, left(l.actor, 100), a.id, l.message,
           jsonb_build_object('v1', jsonb_build_object('logId', l.id, 'action', l.action)),
           coalesce(l.created_at {_UTC}, t.created_at {_UTC}, now())
    FROM v1_task_logs l
    JOIN v1_tasks t ON t.id = l.task_id
    LEFT JOIN agents a ON a.name = l.actor
"""

_ORPHAN_LOGS = "SELECT count(*) FROM v1_task_logs l WHERE NOT EXISTS (SELECT 1 FROM v1_tasks t WHERE t.id = l.task_id)"

_EXPIRED_DELETIONS = """
    SELECT (SELECT count(*) FROM projects WHERE deleted_at < now() - CAST(:days AS float8) * interval '1 day')
         + (SELECT count(*) FROM tasks WHERE deleted_at < now() - CAST(:days AS float8) * interval '1 day')
         + (SELECT count(*) FROM agents WHERE deleted_at < now() - CAST(:days AS float8) * interval '1 day')
"""
