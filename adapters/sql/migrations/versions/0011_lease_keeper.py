"""Who keeps a running attempt's lease: a transport (NATS) or the database.

Until now the SQL side told a NATS worker's attempt by its worker id ("nats:…");
the column says it instead. Running tasks of such workers are marked here.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("lease_keeper", sa.String(40), nullable=True))
    tasks = sa.table(
        "tasks",
        sa.column("state", sa.String),
        sa.column("worker_id", sa.String),
        sa.column("lease_keeper", sa.String),
    )
    op.execute(
        tasks.update()
        .where((tasks.c.state == "running") & tasks.c.worker_id.like("nats:%"))
        .values(lease_keeper="nats")
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("lease_keeper")
