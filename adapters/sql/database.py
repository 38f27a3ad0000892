"""Transactions with one writer path on SQLite and post-commit event hooks.

Every write that changes a task goes through ``Database.write()``: the events
appended in it reach the listeners (the in-process hub, wake-ups) only after
the transaction committed, so nobody sees an event that might still roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.engine import dialect_name, driver_errors_as_unavailable
from flowyard.core.errors import FlowyardError
from flowyard.core.events import Event

log = logging.getLogger(__name__)

CommitListener = Callable[[Sequence[Event]], None]
TxHook = Callable[["Tx", Sequence[Event]], Awaitable[None]]


class PipelineOpen(FlowyardError):
    """SQLAlchemy cannot run inside a pipelined write's pipeline: await tx.plain() first."""


class Tx:
    """One write transaction; ``hooks`` run for every event appended inside it.

    On PostgreSQL the hot statements also use the driver connection under ``conn``
    (``pg_direct.py``), fetched once per transaction into ``driver``. A pipelined write
    (``Database.write(pipelined=True)``) keeps a psycopg pipeline open from its BEGIN:
    ``pg_direct``'s statements queue in it, and only a read of a result waits for the
    server. SQLAlchemy cannot run in a pipeline, so ``conn`` refuses while it is open
    and ``plain()`` ends it (sending what is queued) for code that needs SQLAlchemy.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        hooks: Sequence[TxHook] = (),
        *,
        postgres: bool = False,
        driver: Any = None,
        pipeline: pg_direct.OpenPipeline | None = None,
    ) -> None:
        self._conn = conn
        self.hooks = hooks
        self.events: list[Event] = []
        self.postgres = postgres
        self.driver = driver
        self.pipeline = pipeline

    @property
    def conn(self) -> AsyncConnection:
        if self.pipeline is not None:
            raise PipelineOpen()
        return self._conn

    async def plain(self) -> AsyncConnection:
        """The SQLAlchemy connection, any pipeline ended first (its statements sent and
        their results read; the transaction goes on)."""
        if self.pipeline is not None:
            pipeline, self.pipeline = self.pipeline, None
            await pipeline.end()
        return self._conn


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = dialect_name(engine)
        # PostgreSQL reads run in autocommit: at READ COMMITTED each statement takes its
        # own snapshot inside a transaction too, so a read transaction only added a BEGIN
        # and a ROLLBACK round trip, and psycopg empties its prepared-statement cache on
        # every ROLLBACK (one more round trip, DEALLOCATE ALL, and every hot statement
        # parsed and planned again on that connection).
        self._reads = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else engine
        )
        # SQLite has one writer: serialise writers here instead of failing with "locked".
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._listeners: list[CommitListener] = []
        self._hooks: list[TxHook] = []
        # monotonic time of the last connection failure: reapers hold off after an outage
        self.unavailable_at: float | None = None

    def on_commit(self, listener: CommitListener) -> None:
        """Call ``listener`` with the events of each committed write (no I/O in it)."""
        self._listeners.append(listener)

    def in_transaction(self, hook: TxHook) -> None:
        """Run ``hook`` inside each write that appends events (e.g. webhook delivery rows)."""
        self._hooks.append(hook)

    @contextlib.asynccontextmanager
    async def write(self, *, pipelined: bool = False) -> AsyncIterator[Tx]:
        """A write transaction. ``pipelined`` (PostgreSQL; the others ignore it): BEGIN,
        the driver's statements and COMMIT go out in one psycopg pipeline, on an
        autocommit connection so that psycopg sends no BEGIN of its own and waits for
        nothing until a result is read. A create is then one round trip instead of
        five, a worker's write of results and claims two (``docs/performance.md``)."""
        if pipelined and self.dialect == "postgresql":
            async with self._pipelined_write() as tx:
                yield tx
        else:
            lock = self._write_lock or contextlib.nullcontext()
            async with lock:
                with self._translated():
                    async with self.engine.begin() as conn:
                        tx = Tx(conn, tuple(self._hooks), postgres=self.dialect == "postgresql")
                        yield tx
        if tx.events:
            self.notify(tx.events)

    @contextlib.asynccontextmanager
    async def _pipelined_write(self) -> AsyncIterator[Tx]:
        with self._translated():
            async with self._reads.connect() as conn:
                pg = await pg_direct.driver(conn)
                try:
                    async with pg_direct.transaction(pg) as pipeline:
                        hooks = tuple(self._hooks)
                        tx = Tx(conn, hooks, postgres=True, driver=pg, pipeline=pipeline)
                        yield tx
                except BaseException:
                    if pg.broken or pg.closed:  # else the pool tries to reset it, and logs that
                        await conn.invalidate()
                    raise

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with self._translated():
            async with self._reads.connect() as conn:
                yield conn

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        """Connection failures become ``Unavailable`` and mark the time of the outage."""
        return driver_errors_as_unavailable(self.engine, on_outage=self._outage)

    def _outage(self) -> None:
        self.unavailable_at = time.monotonic()

    def notify(self, events: Sequence[Event]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a broken listener must not undo a committed write
                log.exception("commit listener failed")

    async def close(self) -> None:
        await self.engine.dispose()
