"""Chains: a task's follow-ups (``then``), created when it succeeds, link to it (``parent_id``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("parent_id", sa.Uuid, nullable=True))
    op.add_column("tasks", sa.Column("then", sa.JSON, nullable=True))
    op.create_index("ix_tasks_parent", "tasks", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_parent", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("then")
        batch.drop_column("parent_id")
