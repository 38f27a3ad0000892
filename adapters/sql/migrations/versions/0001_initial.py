"""Tasks, their event log and the workers table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flowyard.adapters.sql.schema import BigId, Name, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("flow", Name, nullable=False),
        sa.Column("owner", Name, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", Name, nullable=True),
        sa.Column("lease_expires_at", UtcDateTime, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("claimed_at", UtcDateTime, nullable=True),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        sa.Column("cancelled_at", UtcDateTime, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_tasks_claim", "tasks", ["state", "flow", "priority", "created_at"])
    op.create_index("ix_tasks_lease", "tasks", ["state", "lease_expires_at"])
    op.create_index("ix_tasks_created", "tasks", ["created_at"])
    op.create_table(
        "events",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Uuid, nullable=False, unique=True),
        sa.Column("task_id", sa.Uuid, nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("flow", Name, nullable=False),
        sa.Column("owner", Name, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("relayed_at", UtcDateTime, nullable=True),
    )
    op.create_index("ix_events_task_id", "events", ["task_id"])
    op.create_index("ix_events_relay", "events", ["relayed_at", "seq"])
    op.create_table(
        "workers",
        sa.Column("id", Name, primary_key=True),
        sa.Column("name", Name, nullable=False),
        sa.Column("host", Name, nullable=False),
        sa.Column("flows", sa.JSON, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("owner", Name, nullable=True),
        sa.Column("transport", sa.String(40), nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("events")
    op.drop_table("tasks")
