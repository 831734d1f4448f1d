"""Claims: the renewal of the agent's other leases at most once a second, without reading them

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 19:50:00

A claim renews the leases of the agent's other active tasks (a claim is a sign of life).
Since 0007 it writes only those it moves by a second or more, but it still read every one of
them to find out: an index scan of the agent's active tasks and a heap fetch per task, on
every claim. An agent that holds many tasks (B1's keep what they claim: about 140 each on
average during a run) paid that on each claim: with ten times as many agents, each holding a
tenth as many, B1 ran 1,096 against 953 claims/s (bench/PROFILE.md, seventh round).

agents.leases_renewed_at is when a claim last renewed the agent's leases. A claim within a
second of it renews nothing and reads none of the agent's tasks (the condition is on the
locked agent's row, so the renewal's scan is not run at all); a later one renews as before
and sets it. The renewal less than a second before left every active lease within a second
of its own new lease, and a task made active since got a lease of its own at least as late,
so a claim still leaves every active lease of its agent within two seconds of its own new
lease (within one before), given one LEASE_SECONDS for all processes. Heartbeats renew
every lease as before and do not set it.

The column is NULL for an agent no claim has renewed (all agents at the upgrade): its first
claim renews. SQLite's claim path renews every lease and leaves the column NULL. The
downgrade restores 0007's function and drops the column.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# True when the locked agent's leases were not renewed within the last second.
_DUE = "(locked.leases_renewed_at IS NULL OR locked.leases_renewed_at <= p_now - interval '1 second')"
# 0007's claim statement (in both of its forms), and what this revision makes of it.
_EDITS = (
    (
        "UPDATE agents SET claimed_count = agents.claimed_count + 1, last_heartbeat_at = p_now, status = 'BUSY'\n",
        "UPDATE agents SET claimed_count = agents.claimed_count + 1, last_heartbeat_at = p_now, status = 'BUSY',\n"  # noqa: S608 (fixed text)
        f"        leases_renewed_at = CASE WHEN {_DUE} THEN p_now ELSE agents.leases_renewed_at END\n",
    ),
    (
        "AND tasks.lease_expires_at < p_lease - interval '1 second' AND EXISTS (SELECT 1 FROM picked)\n",
        "AND tasks.lease_expires_at < p_lease - interval '1 second' AND EXISTS (SELECT 1 FROM picked)\n"  # noqa: S608
        f"        AND {_DUE}\n",
    ),
)


def _revision_0007() -> ModuleType:
    """Migration 0007, read from its file (a module name starting with a digit cannot be
    imported); its text is fixed, released with it."""
    spec = importlib.util.spec_from_file_location("claim_0007", Path(__file__).with_name("0007_claim_indexes.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pg_function() -> str:
    """0007's claim_next_task() with the renewal due only a second after the last one."""
    text: str = _revision_0007().PG_FUNCTION
    for old, new in _EDITS:
        assert text.count(old) == 2, f"0007's function no longer reads as this migration expects: {old!r}"
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    op.add_column("agents", sa.Column("leases_renewed_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(pg_function())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_revision_0007().PG_FUNCTION)
    op.drop_column("agents", "leases_renewed_at")
