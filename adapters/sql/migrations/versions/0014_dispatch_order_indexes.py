"""PostgreSQL: the NATS scheduler's reads stop at the rows they take, whatever the stats say.

Two reads of ``dispatch_records.py`` and ``pg_direct.py`` still grew with the backlog
(measured during a 20,000-task drain, auto_explain):

- the take of a pair's next tasks (``_TAKE``) filtered ``ix_tasks_unsent`` by owner
  and flow, then sorted every unsent task of the pair into the claim's order to keep
  a few: 10-17 ms a round. ``ix_tasks_unsent`` now carries that order after
  ``(owner, flow)``, so the take walks it and stops at its limit; the walk over the
  pairs uses its leading columns as before;
- when the next scheduled task falls due, and which fell due: every queued task was
  read (24 ms). ``ix_tasks_scheduled`` holds only queued tasks with a
  ``not_before``, so tasks claimable at once never enter it.

With fresh statistics the planner found better plans on its own; right after a
large batch of creates, when the backlog matters most, the statistics still say the
table is nearly empty. PostgreSQL only, like 0013; built without CONCURRENTLY
(migrations run before the server starts).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UNSENT = "state = 'queued' AND work_sent_at IS NULL"
SCHEDULED = "state = 'queued' AND not_before IS NOT NULL"
CLAIM_ORDER: list[str | sa.TextClause] = [sa.text("priority DESC"), "created_at", "id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_tasks_unsent", table_name="tasks")
    unsent: list[str | sa.TextClause] = ["owner", "flow", *CLAIM_ORDER]
    op.create_index("ix_tasks_unsent", "tasks", unsent, postgresql_where=sa.text(UNSENT))
    op.create_index(
        "ix_tasks_scheduled", "tasks", ["not_before"], postgresql_where=sa.text(SCHEDULED)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_tasks_scheduled", table_name="tasks")
    op.drop_index("ix_tasks_unsent", table_name="tasks")
    op.create_index("ix_tasks_unsent", "tasks", ["owner", "flow"], postgresql_where=sa.text(UNSENT))
