"""projects.created_by: who created a project, so its creator may delete and restore it

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 17:30:00

Existing projects keep a NULL creator: only the admin key may delete or restore them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(sa.Column("created_by", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("created_by")
