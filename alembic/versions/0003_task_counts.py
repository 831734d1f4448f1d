"""task_counts: live task counts kept by triggers, so dashboardStats never scans tasks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 00:20:00

Every write to tasks appends, in the same transaction, one row per (project, bucket) whose
count it changed: a bucket is the task's status, except READY (PENDING with no unmet
dependency and no availableAt) and DELETED (soft-deleted). Appending instead of updating one
row per bucket means concurrent claims never wait on each other; the reaper folds the rows
(db/counts.py). The table starts with the counts of the tasks already there.

PostgreSQL: statement-level triggers with transition tables (one INSERT per statement, however
many rows it wrote). SQLite: row-level triggers. A later migration that rebuilds tasks on
SQLite (batch_alter_table) drops its triggers and must create them again.
"""

# The SQL below is assembled from constants (the bucket expression), never from input.
# ruff: noqa: S608

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def bucket(row: str) -> str:
    return (
        f"CASE WHEN {row}deleted_at IS NOT NULL THEN 'DELETED' "
        f"WHEN {row}status = 'PENDING' AND {row}unmet_dependencies = 0 AND {row}available_at IS NULL "
        f"THEN 'READY' ELSE {row}status END"
    )


PG_FUNCTION = f"""
CREATE FUNCTION task_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO task_counts (project_id, bucket, n)
    SELECT project_id, {bucket("")}, count(*) FROM new_rows GROUP BY 1, 2;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO task_counts (project_id, bucket, n)
    SELECT project_id, {bucket("")}, -count(*) FROM old_rows GROUP BY 1, 2;
  ELSE
    INSERT INTO task_counts (project_id, bucket, n)
    SELECT project_id, b, sum(d) FROM (
      SELECT project_id, {bucket("")} AS b, 1 AS d FROM new_rows
      UNION ALL
      SELECT project_id, {bucket("")}, -1 FROM old_rows
    ) AS changes GROUP BY 1, 2 HAVING sum(d) <> 0;
  END IF;
  RETURN NULL;
END
$$
"""

PG_TRIGGERS = [
    "CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION task_counts_track()",
    "CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION task_counts_track()",
    "CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION task_counts_track()",
]

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
  INSERT INTO task_counts (project_id, bucket, n) VALUES (NEW.project_id, {bucket("NEW.")}, 1);
END""",
    f"""CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
WHEN ({bucket("OLD.")}) IS NOT ({bucket("NEW.")}) OR OLD.project_id IS NOT NEW.project_id BEGIN
  INSERT INTO task_counts (project_id, bucket, n) VALUES (OLD.project_id, {bucket("OLD.")}, -1);
  INSERT INTO task_counts (project_id, bucket, n) VALUES (NEW.project_id, {bucket("NEW.")}, 1);
END""",
    f"""CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
  INSERT INTO task_counts (project_id, bucket, n) VALUES (OLD.project_id, {bucket("OLD.")}, -1);
END""",
]


def upgrade() -> None:
    op.create_table(
        "task_counts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_counts")),
    )
    op.create_index("ix_task_counts_project_bucket", "task_counts", ["project_id", "bucket"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Writers wait from here to the commit, so the counts below and the triggers agree.
        op.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
    op.execute(
        "INSERT INTO task_counts (project_id, bucket, n) "
        f"SELECT project_id, {bucket('')}, count(*) FROM tasks GROUP BY 1, 2"
    )


def downgrade() -> None:
    for name in ("task_counts_insert", "task_counts_update", "task_counts_delete"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON tasks")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS task_counts_track()")
    op.drop_index("ix_task_counts_project_bucket", table_name="task_counts")
    op.drop_table("task_counts")
