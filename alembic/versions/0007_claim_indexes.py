"""Claims: per-project indexes, lease renewals without index writes, generic plans

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 16:40:00

Three changes to what claimNextTask costs the database (bench/PROFILE.md, "B1, sixth round"):

1. Per-project claim indexes. claimNextTask(projectId) walked the claim index (skill set,
   then claim order) and filtered on the project, so it read past every ready task of other
   projects that came first in claim order: a claim for a project behind another project's
   3,000 ready tasks with the same skills read 3,001 index entries and heap rows. The cost
   grew with other projects' backlogs, and under claim load with every claim made, since the
   claimed project's head moved on while the others' stayed. Two indexes like the claim
   indexes of 0001, led by the project (the ready tasks in claim order, the scheduled ones by
   time), and claim_next_task() with its claim statement in two forms, any project (as
   before) and `t.project_id = p_project`, which the planner serves from the new indexes.

2. No index on tasks.lease_expires_at (ix_tasks_lease dropped), and tasks' fillfactor 90. A
   claim, a heartbeat and a progress report renew the leases of the agent's active tasks:
   with the column indexed, every renewed row was a new row version with an entry in each of
   the table's indexes. Now a renewal is a heap-only (HOT) update when its page has room,
   which the fillfactor leaves on pages written from now on. The reaper's lease scan reads
   the active tasks through ix_tasks_status instead: every ASSIGNED or RUNNING task once per
   reaper pass, not only the overdue ones.

3. claim_next_task() runs its statements with generic plans (plan_cache_mode), planned once
   per connection instead of on each call; tests/db/test_claim_plan.py checks the generic
   plan of the claim, the one a pooled connection uses.

Everything else in the function is unchanged (migration 0005's docstring). No data changes;
the indexes are built at upgrade, holding a lock that blocks writes to tasks while they
build (seconds for a million tasks). The downgrade restores 0005's function and the lease
index, drops the new indexes and resets the fillfactor.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# db/models.py's CLAIMABLE_NOW and CLAIMABLE_LATER as they are at this revision.
_READY = "status = 'PENDING' AND unmet_dependencies = 0 AND deleted_at IS NULL"
CLAIMABLE_NOW = f"{_READY} AND available_at IS NULL"
CLAIMABLE_LATER = f"{_READY} AND available_at IS NOT NULL"

# The best claimable task of skill set s.set_id (and of the project, `{project}`), ready now
# (`{when}`: available_at IS NULL) or scheduled and due, locked unless another claimer holds it.
_BEST_OF_SET = """
      SELECT t.id, t.priority, t.due_at, t.created_at FROM tasks t
      WHERE t.status = 'PENDING' AND t.unmet_dependencies = 0 AND t.deleted_at IS NULL AND {when}
        AND t.skill_set_id = s.set_id{project}
        AND EXISTS (SELECT 1 FROM projects p WHERE p.id = t.project_id AND p.status = 'ACTIVE' AND p.deleted_at IS NULL)
        AND (p_tags IS NULL OR t.tags ?| p_tags)
      ORDER BY t.priority DESC, t.due_at ASC NULLS LAST, t.created_at, t.id LIMIT 1 FOR UPDATE OF t SKIP LOCKED"""


def _claim(project: str) -> str:
    """Claim the best task of the agent's skill sets and, only when one was claimed, log its
    CLAIMED event, count the claim, mark the agent BUSY with a fresh heartbeat and renew the
    leases of its other active tasks, those that the renewal moves by a second or more."""
    ready = _BEST_OF_SET.format(when="t.available_at IS NULL", project=project)
    due = _BEST_OF_SET.format(when="t.available_at <= p_now", project=project)
    return f"""
    WITH picked AS (
      UPDATE tasks SET status = 'ASSIGNED', assignee_id = locked.id, attempt = tasks.attempt + 1,
        assigned_at = p_now, started_at = NULL, submitted_at = NULL, progress = NULL, progress_message = NULL,
        lease_expires_at = p_lease, updated_at = p_now
      WHERE tasks.id = (
        SELECT c.id FROM unnest(sets) AS s(set_id), LATERAL (
          SELECT * FROM ({ready}) AS ready
          UNION ALL
          SELECT * FROM ({due}) AS due
        ) AS c
        ORDER BY c.priority DESC, c.due_at ASC NULLS LAST, c.created_at, c.id LIMIT 1)
      RETURNING tasks.*
    ),
    event AS (
      INSERT INTO task_events (task_id, project_id, type, from_status, to_status, actor, agent_id, created_at)
      SELECT id, project_id, 'CLAIMED', 'PENDING', 'ASSIGNED', p_agent, assignee_id, p_now FROM picked
    ),
    counted AS (
      UPDATE agents SET claimed_count = agents.claimed_count + 1, last_heartbeat_at = p_now, status = 'BUSY'
      WHERE agents.id = locked.id AND EXISTS (SELECT 1 FROM picked)
    ),
    renewed AS (
      UPDATE tasks SET lease_expires_at = p_lease
      WHERE tasks.assignee_id = locked.id AND tasks.status = ANY(p_active)
        AND tasks.lease_expires_at < p_lease - interval '1 second' AND EXISTS (SELECT 1 FROM picked)
    )
    SELECT * INTO claimed FROM picked;"""  # noqa: S608 (fixed text, no input)


PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION claim_next_task(
  p_agent text, p_now timestamptz, p_lease timestamptz, p_active text[], p_project bigint, p_tags text[]
) RETURNS TABLE (agent agents, active bigint, task tasks) LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  locked agents;
  held bigint;
  sets bigint[];
  claimed tasks;
BEGIN
  SELECT * INTO locked FROM agents WHERE agents.name = p_agent FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  agent := locked;
  -- A statement after the lock: its snapshot holds every claim that held the agent before.
  SELECT count(*) INTO held FROM tasks
  WHERE tasks.assignee_id = locked.id AND tasks.status = ANY(p_active) AND tasks.deleted_at IS NULL;
  active := held;
  IF locked.deleted_at IS NOT NULL OR held >= locked.max_concurrent_tasks THEN
    RETURN NEXT;
    RETURN;
  END IF;
  sets := ARRAY(SELECT skill_sets.id FROM skill_sets WHERE skill_sets.skills <@ coalesce(locked.skills, '[]'::jsonb));
  IF cardinality(sets) = 0 THEN
    RETURN NEXT;
    RETURN;
  END IF;
  -- Two forms of one statement, each planned for its own case: any project reads the claim
  -- indexes by skill set; one project reads that project's (ix_tasks_claim_project...).
  IF p_project IS NULL THEN{_claim("")}
  ELSE{_claim(" AND t.project_id = p_project")}
  END IF;
  task := claimed;
  RETURN NEXT;
END
$$
"""  # noqa: S608 (fixed text, no input)


def upgrade() -> None:
    op.create_index(
        "ix_tasks_claim_project",
        "tasks",
        ["project_id", "skill_set_id", sa.literal_column("priority DESC"), "due_at", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text(CLAIMABLE_NOW),
        sqlite_where=sa.text(CLAIMABLE_NOW),
    )
    op.create_index(
        "ix_tasks_claim_project_scheduled",
        "tasks",
        ["project_id", "skill_set_id", "available_at"],
        unique=False,
        postgresql_where=sa.text(CLAIMABLE_LATER),
        sqlite_where=sa.text(CLAIMABLE_LATER),
    )
    op.drop_index("ix_tasks_lease", table_name="tasks")
    op.drop_index("ix_agents_status_heartbeat", table_name="agents")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute("ALTER TABLE tasks SET (fillfactor = 90)")
        op.execute("ALTER TABLE agents SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # 0005's function, read from its migration (whose module name is not importable).
        spec = importlib.util.spec_from_file_location("claim_0005", Path(__file__).with_name("0005_claim_function.py"))
        assert spec is not None
        assert spec.loader is not None
        previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(previous)
        op.execute(previous.PG_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
        op.execute("ALTER TABLE tasks RESET (fillfactor)")
        op.execute("ALTER TABLE agents RESET (fillfactor)")
    op.create_index("ix_agents_status_heartbeat", "agents", ["status", "last_heartbeat_at"], unique=False)
    op.drop_index("ix_tasks_claim_project_scheduled", table_name="tasks")
    op.drop_index("ix_tasks_claim_project", table_name="tasks")
    op.create_index(
        "ix_tasks_lease",
        "tasks",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('ASSIGNED', 'RUNNING')"),
        sqlite_where=sa.text("status IN ('ASSIGNED', 'RUNNING')"),
    )
