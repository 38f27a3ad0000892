"""The statements every task passes through, on PostgreSQL, sent to psycopg directly.

Through SQLAlchemy's async layer every statement costs a greenlet, an execution
context, and parameter and result processing: a worker's write of four results,
four claims and eight events spent 5.5 ms of CPU that way against 4.0 ms here
(``docs/performance.md``, fourth sitting). The new rows of a create, the events'
insert, the claim, a worker's fenced result, the NOTIFYs, the server's fold
of transport workers' events (lock, look up, write back) and the NATS
scheduler's take (slot counts, then read and mark sent) are written here as
PostgreSQL SQL and run on the driver connection of the same transaction, so
they commit or roll back with everything else the write did. Transactions stay
with SQLAlchemy, and so do SQLite and MariaDB, which run the Core statements;
both paths write the same columns from the same values (``rows.py``).

The driver's errors are raised as SQLAlchemy's (``DBAPIError.instance``), so
``driver_errors_as_unavailable`` and every ``except IntegrityError`` treat both
paths alike; a connection that broke is thrown away by SQLAlchemy when it rolls
the transaction back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.sql.schema import tasks

if TYPE_CHECKING:
    from flowyard.adapters.sql.database import Tx

# One statement for any number of a worker's results: arrays, one per column, joined to
# their rows under the fence. The rows are locked in task-id order (the caller sorts
# them; the join walks the arrays in order, looking each row up by its key).
_FINISH_HELD = """
UPDATE tasks SET state = r.state, outputs = r.outputs::json, error = r.error,
    finished_at = r.finished_at, lease_expires_at = r.lease_expires_at,
    updated_at = r.updated_at, progress = coalesce(r.progress, tasks.progress),
    cancelled_at = coalesce(r.cancelled_at, tasks.cancelled_at)
FROM unnest(%(_id)b::uuid[], %(_attempt)b::int[], %(_worker)b::text[], %(state)b::text[],
    %(outputs)b::text[], %(error)b::text[], %(finished_at)b::timestamptz[],
    %(lease_expires_at)b::timestamptz[], %(updated_at)b::timestamptz[],
    %(_progress)b::float8[], %(_cancelled_at)b::timestamptz[])
    AS r(id, attempt, worker_id, state, outputs, error, finished_at, lease_expires_at,
        updated_at, progress, cancelled_at)
WHERE tasks.id = r.id AND tasks.attempt = r.attempt AND tasks.state = 'running'
    AND tasks.worker_id = r.worker_id
"""
_FINISH_COLUMNS = (
    "_id", "_attempt", "_worker", "state", "outputs", "error", "finished_at",
    "lease_expires_at", "updated_at", "_progress", "_cancelled_at",
)  # fmt: skip

_CLAIM = """
WITH picked AS (
    SELECT id FROM tasks
    WHERE state = 'queued' AND flow = ANY(%(_flows)s)
        AND (not_before IS NULL OR not_before <= %(_now)s) {owner}
    ORDER BY priority DESC, created_at, id
    LIMIT %(_limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET state = 'running', attempt = tasks.attempt + 1, worker_id = %(_worker)s,
    lease_expires_at = %(_deadline)s, claimed_at = %(_now)s, progress = 0.0, message = '',
    not_before = NULL, updated_at = %(_now)s
FROM picked WHERE tasks.id = picked.id
RETURNING tasks.*
"""
_CLAIM_ANY_OWNER = _CLAIM.format(owner="")
_CLAIM_ONE_OWNER = _CLAIM.format(owner="AND owner = %(_owner)s")

# One statement for any number of events: arrays, one per column, unnested in order (the
# log's seq follows the batch's order, as the multi-row insert of the Core path does).
# The arrays go in binary (%b): the text format escapes every quote of every JSON body
# with a regular expression, which cost more than the rest of the statement.
_INSERT_EVENTS = """
INSERT INTO events (id, task_id, type, flow, owner, attempt, at, body, relayed_at)
SELECT id, task_id, type, flow, owner, attempt, at, body, %(relayed_at)s::timestamptz
FROM unnest(%(id)b::uuid[], %(task_id)b::uuid[], %(type)b::text[], %(flow)b::text[],
    %(owner)b::text[], %(attempt)b::int[], %(at)b::timestamptz[], %(body)b::text[])
    WITH ORDINALITY AS e(id, task_id, type, flow, owner, attempt, at, body, n)
ORDER BY n
"""
_EVENT_COLUMNS = ("id", "task_id", "type", "flow", "owner", "attempt", "at", "body")


async def connection(tx: Tx) -> psycopg.AsyncConnection[Any] | None:
    """The psycopg connection under ``tx`` on PostgreSQL; None on the other databases."""
    if not tx.postgres:
        return None
    if tx.driver is None:
        tx.driver = await driver(tx.conn)
    pg: psycopg.AsyncConnection[Any] = tx.driver
    return pg


async def driver(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a SQLAlchemy connection to PostgreSQL."""
    raw = await conn.get_raw_connection()  # checked out: its driver connection is there
    return cast("psycopg.AsyncConnection[Any]", raw.driver_connection)


@contextlib.contextmanager
def _as_sqlalchemy_errors(pg: psycopg.AsyncConnection[Any], statement: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=pg.broken or pg.closed
        ) from exc


@contextlib.asynccontextmanager
async def _cursor(
    pg: psycopg.AsyncConnection[Any], statement: str
) -> AsyncIterator[psycopg.AsyncCursor[dict[str, Any]]]:
    with _as_sqlalchemy_errors(pg, statement):
        async with pg.cursor(row_factory=dict_row) as cur:
            yield cur


@contextlib.asynccontextmanager
async def pipelined(pg: psycopg.AsyncConnection[Any] | None) -> AsyncIterator[None]:
    """The statements sent inside go out together; the first fetch or the end reads them.

    Each round trip wakes PostgreSQL's process and then this one, which on this kind of
    host costs more CPU than the statements themselves (``docs/performance.md``). A
    transaction's BEGIN still goes on its own: psycopg waits for its answer even here.
    A failed statement aborts those queued after it, and its error is raised at the
    read or at the end, as SQLAlchemy's. None (another database): nothing changes.
    """
    if pg is None:
        yield
        return
    with _as_sqlalchemy_errors(pg, "pipeline"):
        async with pg.pipeline():
            yield


class OpenPipeline:
    """The pipeline of a pipelined write while it is open (``Tx.pipeline``)."""

    def __init__(self, stack: contextlib.AsyncExitStack, pipeline: psycopg.AsyncPipeline) -> None:
        self._stack = stack
        self._pipeline = pipeline

    async def sync(self) -> None:
        """Send what is queued and read its results; the pipeline stays open."""
        await self._pipeline.sync()

    async def end(self) -> None:
        """Send what is queued, read its results and leave pipeline mode."""
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def transaction(pg: psycopg.AsyncConnection[Any]) -> AsyncIterator[OpenPipeline]:
    """BEGIN … COMMIT on an autocommit connection, the BEGIN queued in a pipeline.

    The pipeline stays open for the statements inside until the caller ends it
    (``Tx.plain``); the COMMIT is queued in it when it is still open, so a write that
    reads nothing is one round trip. A failed statement is raised when its result
    is read or at the end; the transaction is then rolled back.
    """
    stack = contextlib.AsyncExitStack()
    with _as_sqlalchemy_errors(pg, "pipelined transaction"):
        try:
            pipeline = OpenPipeline(stack, await stack.enter_async_context(pg.pipeline()))
            await pg.execute("BEGIN")
            yield pipeline
            await pg.execute("COMMIT")
            await pipeline.end()
        except BaseException:
            await stack.__aexit__(*sys.exc_info())  # reads what is queued; keeps the error
            if not pg.closed and pg.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):  # a broken one: the pool drops it
                    await pg.rollback()
            raise


async def finish_held(
    pg: psycopg.AsyncConnection[Any], rows: Sequence[dict[str, Any]]
) -> psycopg.AsyncCursor[Any]:
    """Send ``held_results``' fenced update for ``rows`` (its parameters) in one statement,
    rows locked in the order given. Its cursor's ``rowcount`` (how many rows matched) is
    known once its result was read: at once outside a pipeline, inside one after the
    next read or sync (``matched``)."""
    params: dict[str, Any] = {name: [row[name] for row in rows] for name in _FINISH_COLUMNS}
    params["outputs"] = [_json(value) for value in params["outputs"]]
    cur = pg.cursor()  # left open: a closed cursor forgets the result that arrives later
    with _as_sqlalchemy_errors(pg, _FINISH_HELD):
        await cur.execute(_FINISH_HELD, params)
    return cur


async def matched(cur: psycopg.AsyncCursor[Any], pipeline: OpenPipeline | None) -> int:
    """The rows ``cur``'s update matched, syncing ``pipeline`` first if its result is
    still on the way."""
    if cur.pgresult is None and pipeline is not None:
        await pipeline.sync()
    count = cur.rowcount
    await cur.close()
    return count


async def claim(pg: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The claim of ``claims.py`` (same parameters); the claimed rows as column dicts."""
    statement = _CLAIM_ONE_OWNER if "_owner" in params else _CLAIM_ANY_OWNER
    async with _cursor(pg, statement) as cur:
        await cur.execute(statement, params)
        return [_in_utc(row) for row in await cur.fetchall()]


async def insert_events(
    pg: psycopg.AsyncConnection[Any], rows: Sequence[dict[str, Any]], relayed_at: datetime | None
) -> None:
    """Insert the events' rows (``rows.event_values``) in one statement."""
    params: dict[str, Any] = {name: [row[name] for row in rows] for name in _EVENT_COLUMNS}
    params["relayed_at"] = relayed_at
    async with _cursor(pg, _INSERT_EVENTS) as cur:
        await cur.execute(_INSERT_EVENTS, params)


async def insert_tasks(pg: psycopg.AsyncConnection[Any], rows: Sequence[dict[str, Any]]) -> None:
    """Insert new tasks' rows (``rows.task_values``, all with the same columns)."""
    statement = _insert_tasks_statement(tuple(rows[0]))
    async with _cursor(pg, statement) as cur:
        await cur.executemany(statement, [_json_columns(row) for row in rows])


BULK_ROWS = 1000
"""A batch of at least this many new tasks (and a tenth of the table) refreshes the
planner's statistics of ``tasks`` in its own transaction."""

_TASKS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass"


async def refresh_statistics_after(pg: psycopg.AsyncConnection[Any], added: int) -> None:
    """``ANALYZE tasks`` in the transaction that added ``added`` rows, when that many
    change what the statistics say.

    Autovacuum analyzes the table only at its next round (a minute apart by default).
    Until then the planner believes the queued tasks are as few as they were: with
    20,000 just queued, claims were planned as a read and a sort of every queued task
    (7-18 ms each) instead of a walk of the claim's index that stops at its limit.
    ANALYZE counts the rows this transaction inserted, so the statistics it commits
    with them are right from the first claim; it samples at most 30,000 rows."""
    if added < BULK_ROWS:
        return
    async with _cursor(pg, _TASKS_ESTIMATE) as cur:
        await cur.execute(_TASKS_ESTIMATE)
        row = await cur.fetchone()
    known = max(0.0, float(row["reltuples"])) if row else 0.0
    if added >= known / 10:
        async with _cursor(pg, "ANALYZE tasks") as cur:
            await cur.execute("ANALYZE tasks")


async def lock_tasks_and_known_events(
    pg: psycopg.AsyncConnection[Any],
    task_ids: Collection[uuid.UUID],
    event_ids: Sequence[uuid.UUID],
) -> tuple[list[dict[str, Any]], set[uuid.UUID]]:
    """The tasks' rows, row-locked in id order, and which of ``event_ids`` the log holds:
    one round trip after the transaction's BEGIN (``projection.py``'s first step)."""
    async with (
        pipelined(pg),
        _cursor(pg, _LOCK_TASKS) as locked,
        _cursor(pg, _KNOWN_EVENTS) as known,
    ):
        await locked.execute(_LOCK_TASKS, [sorted(task_ids)])
        await known.execute(_KNOWN_EVENTS, [list(event_ids)])
        rows = [_in_utc(row) for row in await locked.fetchall()]
        return rows, {row["id"] for row in await known.fetchall()}


async def forget_work_sent(pg: psycopg.AsyncConnection[Any], task_ids: Sequence[uuid.UUID]) -> None:
    """``task_store.forget_work_sent``: these tasks need a new work message."""
    async with _cursor(pg, _FORGET_WORK_SENT) as cur:
        await cur.execute(_FORGET_WORK_SENT, [list(task_ids)])


async def mark_workers_seen(
    pg: psycopg.AsyncConnection[Any], worker_ids: Sequence[str], now: datetime
) -> set[str]:
    """Mark the listed ones of ``worker_ids`` seen at ``now``; return which are listed."""
    async with _cursor(pg, _MARK_WORKERS_SEEN) as cur:
        await cur.execute(_MARK_WORKERS_SEEN, [now, list(worker_ids)])
        return {row["id"] for row in await cur.fetchall()}


async def update_tasks(pg: psycopg.AsyncConnection[Any], rows: Sequence[dict[str, Any]]) -> None:
    """Write whole task rows (``rows.task_values``, all with the same columns) by ``id``."""
    statement = _update_tasks_statement(tuple(rows[0]))
    async with _cursor(pg, statement) as cur:
        await cur.executemany(statement, [_json_columns(row) for row in rows])


async def room_counts(
    pg: psycopg.AsyncConnection[Any], now: datetime, keeper: str
) -> list[dict[str, Any]]:
    """``dispatch_records``' counts: work in use per ``(owner, flow)`` with work waiting."""
    async with _cursor(pg, _ROOM_COUNTS) as cur:
        await cur.execute(_ROOM_COUNTS, {"now": now, "keeper": keeper})
        return await cur.fetchall()


async def take_unsent(
    pg: psycopg.AsyncConnection[Any], now: datetime, wanted: Sequence[tuple[str, str, int]]
) -> list[dict[str, Any]]:
    """Mark up to ``n`` unsent due tasks of each ``(owner, flow, n)`` sent and return their
    rows (one statement per pair, pipelined by psycopg)."""
    params = [{"now": now, "owner": owner, "flow": flow, "n": n} for owner, flow, n in wanted]
    if not params:
        return []
    return await _taken(pg, _TAKE_UNSENT_OF_PAIR, params)


async def take_any_unsent(
    pg: psycopg.AsyncConnection[Any], now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Mark up to ``limit`` unsent due tasks of any owner and flow sent; return their rows."""
    return await _taken(pg, _TAKE_UNSENT, [{"now": now, "n": limit}])


async def _taken(
    pg: psycopg.AsyncConnection[Any], statement: str, params: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with _cursor(pg, statement) as cur:
        await cur.executemany(statement, params, returning=True)
        while True:
            found += [_in_utc(row) for row in await cur.fetchall()]
            if not cur.nextset():
                return found


_UNSENT_DUE = (
    "state = 'queued' AND work_sent_at IS NULL AND (not_before IS NULL OR not_before <= %(now)s)"
)
# Which pairs have unsent work: a walk over ``ix_tasks_unsent``, one index probe per pair
# (a GROUP BY read every queued task each round); the due check stops at the first due
# task of the pair (a LATERAL with LIMIT 1: as an EXISTS, the planner may hash every
# unsent task instead, 16 ms with 20,000 queued). Then what is in use per pair: running
# on this transport, or sent ahead and not yet claimed (``ix_tasks_sent``: a few rows,
# not the backlog).
_UNSENT = "state = 'queued' AND work_sent_at IS NULL"
_ROOM_COUNTS = f"""
WITH RECURSIVE pairs AS (
    (SELECT owner, flow FROM tasks WHERE {_UNSENT} ORDER BY owner, flow LIMIT 1)
    UNION ALL
    SELECT later.owner, later.flow FROM pairs, LATERAL (
        SELECT owner, flow FROM tasks
        WHERE {_UNSENT} AND (owner, flow) > (pairs.owner, pairs.flow)
        ORDER BY owner, flow LIMIT 1
    ) AS later
),
busy AS (
    SELECT owner, flow, count(*) AS busy FROM tasks
    WHERE (state = 'running' AND lease_keeper = %(keeper)s)
        OR (state = 'queued' AND work_sent_at IS NOT NULL)
    GROUP BY owner, flow
)
SELECT pairs.owner, pairs.flow, coalesce(busy.busy, 0) AS busy
FROM pairs
CROSS JOIN LATERAL (
    SELECT 1 FROM tasks AS t
    WHERE t.owner = pairs.owner AND t.flow = pairs.flow AND {_UNSENT_DUE}
    LIMIT 1
) AS due
LEFT JOIN busy ON busy.owner = pairs.owner AND busy.flow = pairs.flow
"""
# In the claim's order: highest priority first, then oldest.
_TAKE = """
WITH picked AS (
    SELECT id FROM tasks
    WHERE {due} {pair}
    ORDER BY priority DESC, created_at, id
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET work_sent_at = %(now)s FROM picked WHERE tasks.id = picked.id
RETURNING tasks.*
"""
_TAKE_UNSENT = _TAKE.format(due=_UNSENT_DUE, pair="")
_TAKE_UNSENT_OF_PAIR = _TAKE.format(
    due=_UNSENT_DUE, pair="AND owner = %(owner)s AND flow = %(flow)s"
)
_LOCK_TASKS = "SELECT * FROM tasks WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_KNOWN_EVENTS = "SELECT id FROM events WHERE id = ANY(%s)"
_FORGET_WORK_SENT = "UPDATE tasks SET work_sent_at = NULL WHERE id = ANY(%s)"
_MARK_WORKERS_SEEN = "UPDATE workers SET last_seen_at = %s WHERE id = ANY(%s) RETURNING id"
_JSON = frozenset(column.name for column in tasks.c if isinstance(column.type, sa.JSON))


def _json_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {name: _json(value) if name in _JSON else value for name, value in row.items()}


def _placeholder(name: str) -> str:
    return f"%({name})s::json" if name in _JSON else f"%({name})s"


@functools.lru_cache(maxsize=8)
def _update_tasks_statement(columns: tuple[str, ...]) -> str:
    assigned = ", ".join(f'"{name}" = {_placeholder(name)}' for name in columns if name != "id")
    return f"UPDATE tasks SET {assigned} WHERE id = %(id)s"


@functools.lru_cache(maxsize=8)
def _insert_tasks_statement(columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{name}"' for name in columns)
    values = ", ".join(_placeholder(name) for name in columns)
    return f"INSERT INTO tasks ({names}) VALUES ({values})"


def _json(value: Any) -> str | None:
    """A JSON column's value as its text (None: SQL NULL, as ``then`` stores no chain)."""
    return None if value is None else json.dumps(value)


async def notify(pg: psycopg.AsyncConnection[Any], keys: Sequence[tuple[str, str]]) -> None:
    """``pg_notify`` for each ``(channel, payload)``, in one statement (one round trip)."""
    statement = _notify_statement(len(keys))
    async with _cursor(pg, statement) as cur:
        await cur.execute(statement, [value for key in keys for value in key])


@functools.lru_cache(maxsize=64)
def _notify_statement(count: int) -> str:
    return "SELECT " + ", ".join(["pg_notify(%s, %s)"] * count)


def _in_utc(row: dict[str, Any]) -> dict[str, Any]:
    """Datetimes in UTC whatever the session's time zone, as ``schema.UtcDateTime`` reads them."""
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = value.astimezone(UTC)
    return row
