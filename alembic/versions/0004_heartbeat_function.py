"""heartbeat_agent(): an agent's heartbeat in one round trip on PostgreSQL

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:15:00

The heartbeat (db/driver.py) locks the agent, then renews its leases and sets its status and
heartbeat time. The lock must come first, in a statement of its own, so that what follows is
read after any claim that held the agent has committed: its new task is then renewed and
counted (BUSY). In a transaction that is four round trips (BEGIN, two statements, COMMIT);
as one call of this VOLATILE function, whose statements each take a fresh snapshot in READ
COMMITTED, it is one. It returns the agent as it was locked (`previous`, for the presence
event) and as updated, or no row when there is no live agent of that name.

No data changes. SQLite has no functions of this kind and keeps its ORM path.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FUNCTION = """
CREATE FUNCTION heartbeat_agent(
  agent_name text, lease_until timestamptz, active_statuses text[], beat_at timestamptz, busy text, online text
) RETURNS TABLE (previous agents, agent agents) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  locked agents;
  touched agents;
BEGIN
  SELECT * INTO locked FROM agents WHERE agents.name = agent_name FOR UPDATE;
  IF NOT FOUND OR locked.deleted_at IS NOT NULL THEN
    RETURN;
  END IF;
  WITH renewed AS (
    UPDATE tasks SET lease_expires_at = lease_until
    WHERE tasks.assignee_id = locked.id AND tasks.status = ANY(active_statuses) RETURNING tasks.deleted_at
  )
  UPDATE agents SET last_heartbeat_at = beat_at,
    status = CASE WHEN EXISTS (SELECT 1 FROM renewed WHERE renewed.deleted_at IS NULL) THEN busy ELSE online END
  WHERE agents.id = locked.id RETURNING * INTO touched;
  previous := locked;
  agent := touched;
  RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS heartbeat_agent(text, timestamptz, text[], timestamptz, text, text)")
