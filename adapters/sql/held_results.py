"""A worker's results for the attempts it holds, written without reading their rows.

``record_in`` folds one event at a time: lock the row, look the event id up,
fold, write the row, append the event (four statements per result). A result
from the worker that holds the attempt changes fields that depend on the event
alone (``core.task.done_update``), and ``apply`` accepts it exactly when the row
is running that attempt for that worker (``core.task.held_by_worker``). So a
batch of such results is one ``UPDATE`` for all rows with that fence in its
``WHERE``: on PostgreSQL one statement joining the rows to arrays of the results
(``pg_direct.py``), elsewhere an executemany; the queue appends their events
with those of the claim in the same write, in one multi-row insert. When fewer
rows matched than results were given (an attempt taken away, or a retried write
whose first try committed after all), the caller rolls back and records the
batch event by event, which decides each case as it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

import sqlalchemy as sa

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Tx
from flowyard.adapters.sql.rows import column_values
from flowyard.adapters.sql.schema import UtcDateTime, tasks
from flowyard.core.errors import FlowyardError
from flowyard.core.events import TaskDone
from flowyard.core.task import TaskState, done_update

_FINISH_HELD = (
    sa.update(tasks)
    .where(
        (tasks.c.id == sa.bindparam("_id"))
        & (tasks.c.attempt == sa.bindparam("_attempt"))
        & (tasks.c.state == TaskState.running.value)
        & (tasks.c.worker_id == sa.bindparam("_worker"))
    )
    .values(
        state=sa.bindparam("state"),
        outputs=sa.bindparam("outputs"),
        error=sa.bindparam("error"),
        finished_at=sa.bindparam("finished_at"),
        lease_expires_at=sa.bindparam("lease_expires_at"),
        updated_at=sa.bindparam("updated_at"),
        # set by some results only: the others keep the row's value
        progress=sa.func.coalesce(sa.bindparam("_progress", type_=sa.Float), tasks.c.progress),
        cancelled_at=sa.func.coalesce(
            sa.bindparam("_cancelled_at", type_=UtcDateTime), tasks.c.cancelled_at
        ),
    )
)


class NotAllHeld(FlowyardError):
    """Some result's attempt is no longer running for its worker: record one by one.
    Caught inside this adapter; it never leaves it."""


def is_held_result(event: object) -> TypeGuard[TaskDone]:
    """A worker's own result: the kind ``write_held_results`` writes."""
    return isinstance(event, TaskDone) and event.worker_id is not None


class Fence:
    """Whether every result of a write found its row still held, known once the update's
    result was read: in a pipelined write, the claim sent after it reads both."""

    def __init__(self, expected: int, cursor: Any = None, matched: int | None = None) -> None:
        self._expected = expected
        self._cursor = cursor
        self._matched = matched

    async def check(self, tx: Tx) -> None:
        """Raise ``NotAllHeld`` when some result did not match (``tx`` must roll back)."""
        matched = self._matched
        if matched is None:
            matched = await pg_direct.matched(self._cursor, tx.pipeline)
        if matched != self._expected:
            raise NotAllHeld(f"{self._expected - matched} of {self._expected} results not held")


async def write_held_results(tx: Tx, results: Sequence[TaskDone]) -> Fence:
    """Write the results into their rows (locked in the order given) in ``tx``; the caller
    appends their events, and checks the fence before the write commits."""
    if not results:
        return Fence(0, matched=0)
    rows = [_row(event) for event in results]
    pg = await pg_direct.connection(tx)
    if pg is not None:
        return Fence(len(rows), cursor=await pg_direct.finish_held(pg, rows))
    return Fence(len(rows), matched=(await tx.conn.execute(_FINISH_HELD, rows)).rowcount)


def _row(event: TaskDone) -> dict[str, Any]:
    values = column_values(done_update(event))
    row: dict[str, Any] = {
        "_id": event.task_id,
        "_attempt": event.attempt,
        "_worker": event.worker_id,
        "_progress": values.pop("progress", None),
        "_cancelled_at": values.pop("cancelled_at", None),
    }
    return row | values
