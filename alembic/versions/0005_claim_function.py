"""claim_next_task(): claimNextTask in one round trip on PostgreSQL, counting after the lock

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:40:00

claimNextTask (db/driver.py) was a transaction of two statements: lock the agent with its
count of active tasks and the skill sets it has, then claim. The count was computed in the
locking statement, from that statement's snapshot, taken before it waited for the lock: a
claim that waited while another claim of the same agent committed did not see that claim's
task, so concurrent claims of one agent could all pass its maxConcurrentTasks (twenty at
once with a limit of three all won). This function locks the agent in a statement of its
own, then counts, then claims, each statement with a fresh snapshot (VOLATILE, READ
COMMITTED), in one round trip instead of four (BEGIN, two statements, COMMIT), so the
agent's lock and the claimed task's are no longer held across the client's round trips.

It returns no row for an unknown agent; otherwise the agent as locked, its count of active
tasks, and the claimed task (all fields NULL when nothing was claimed: the agent is deleted,
at its limit, has no skill set, or nothing it may claim is ready). The claim itself is the
statement the driver ran before, unchanged: docs/ARCHITECTURE.md, "Claiming".

No data changes. SQLite has no functions of this kind and keeps its ORM path.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The best claimable task of skill set s.set_id, ready now (`{when}`: available_at IS NULL)
# or scheduled and due, locked unless another claimer holds it.
_BEST_OF_SET = """
      SELECT t.id, t.priority, t.due_at, t.created_at FROM tasks t
      WHERE t.status = 'PENDING' AND t.unmet_dependencies = 0 AND t.deleted_at IS NULL AND {when}
        AND t.skill_set_id = s.set_id
        AND EXISTS (SELECT 1 FROM projects p WHERE p.id = t.project_id AND p.status = 'ACTIVE' AND p.deleted_at IS NULL)
        AND (p_project IS NULL OR t.project_id = p_project) AND (p_tags IS NULL OR t.tags ?| p_tags)
      ORDER BY t.priority DESC, t.due_at ASC NULLS LAST, t.created_at, t.id LIMIT 1 FOR UPDATE OF t SKIP LOCKED"""

PG_FUNCTION = f"""
CREATE FUNCTION claim_next_task(
  p_agent text, p_now timestamptz, p_lease timestamptz, p_active text[], p_project bigint, p_tags text[]
) RETURNS TABLE (agent agents, active bigint, task tasks) LANGUAGE plpgsql VOLATILE AS $$
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
  -- Claim the best task of those sets and, only when one was claimed, log its CLAIMED
  -- event, count the claim, mark the agent BUSY with a fresh heartbeat and renew the leases
  -- of its other active tasks.
  WITH picked AS (
    UPDATE tasks SET status = 'ASSIGNED', assignee_id = locked.id, attempt = tasks.attempt + 1,
      assigned_at = p_now, started_at = NULL, submitted_at = NULL, progress = NULL, progress_message = NULL,
      lease_expires_at = p_lease, updated_at = p_now
    WHERE tasks.id = (
      SELECT c.id FROM unnest(sets) AS s(set_id), LATERAL (
        SELECT * FROM ({_BEST_OF_SET.format(when="t.available_at IS NULL")}) AS ready
        UNION ALL
        SELECT * FROM ({_BEST_OF_SET.format(when="t.available_at <= p_now")}) AS due
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
    WHERE tasks.assignee_id = locked.id AND tasks.status = ANY(p_active) AND EXISTS (SELECT 1 FROM picked)
  )
  SELECT * INTO claimed FROM picked;
  task := claimed;
  RETURN NEXT;
END
$$
"""  # noqa: S608 (fixed text, no input)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS claim_next_task(text, timestamptz, timestamptz, text[], bigint, text[])")
