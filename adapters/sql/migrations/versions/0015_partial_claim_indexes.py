"""PostgreSQL: the claim's order index and the lease index hold only the state they serve.

Right after a large batch of creates the planner's statistics still describe the
table as it was. With 20,000 tasks just queued, a worker's claim (a prepared
statement) was planned on ``ix_tasks_lease`` (``state, lease_expires_at``), the
smallest index that starts with ``state``, and sorted every queued task into the
claim's order to take four: 7-18 ms a claim, and a drain of that backlog at a
third of its usual rate. ``ix_tasks_lease`` serves the reaper, which looks for
running tasks only, and ``ix_tasks_next`` serves the claim (and the NATS
scheduler's take), which look for queued tasks only. As partial indexes of those
states:

- the claim's only index for queued tasks in its order is ``ix_tasks_next``, so it
  walks it and stops at its limit whatever the statistics say;
- a task's claim and its result add no entry to ``ix_tasks_next``, and its result
  none to ``ix_tasks_lease`` (every update of a task changes ``state``, so none is
  a HOT update and each used to add an entry to every index).

The queries name the state as a literal (``pg_direct.py``) or as a parameter that
the reaper's plan may look at. PostgreSQL only; SQLite matches partial indexes
only against literal terms, and MariaDB has none. Built without CONCURRENTLY
(migrations run before the server starts).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

NEXT: list[str | sa.TextClause] = ["state", sa.text("priority DESC"), "created_at", "id"]
LEASE: list[str | sa.TextClause] = ["state", "lease_expires_at"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns, state in (
        ("ix_tasks_next", NEXT, "queued"),
        ("ix_tasks_lease", LEASE, "running"),
    ):
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns, postgresql_where=sa.text(f"state = '{state}'"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in (("ix_tasks_next", NEXT), ("ix_tasks_lease", LEASE)):
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns)
