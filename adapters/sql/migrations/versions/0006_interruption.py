"""A task cancelled because its client went away records when, and at which stage.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flowyard.adapters.sql.schema import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("interrupted_at", UtcDateTime, nullable=True))
    op.add_column("tasks", sa.Column("interrupted_stage", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("interrupted_stage")
        batch.drop_column("interrupted_at")
