"""Reading the event log by position, for tailers that follow it from another process.

``seq`` is an autoincrement id: on PostgreSQL and MariaDB concurrent writers
commit out of order, so a reader that saw seq 12 may see seq 11 only later.
``events_by_seq`` lets a tailer look again for the holes it noticed.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.rows import event_from_row
from flowyard.adapters.sql.schema import events
from flowyard.core.events import Event

MAX_SEQS_PER_QUERY = 1000


async def events_by_seq(db: Database, seqs: Collection[int]) -> list[tuple[int, Event]]:
    """The log entries among ``seqs`` that exist now, in ``seq`` order."""
    wanted = sorted(seqs)
    found: list[tuple[int, Event]] = []
    async with db.read() as conn:
        for start in range(0, len(wanted), MAX_SEQS_PER_QUERY):
            chunk = wanted[start : start + MAX_SEQS_PER_QUERY]
            query = (
                sa.select(events.c.seq, events.c.body)
                .where(events.c.seq.in_(chunk))
                .order_by(events.c.seq)
            )
            rows = (await conn.execute(query)).all()
            found.extend((r.seq, event_from_row(r)) for r in rows)
    return found
