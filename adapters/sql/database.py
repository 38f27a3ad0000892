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
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowyard.adapters.sql.engine import dialect_name, driver_errors_as_unavailable
from flowyard.core.events import Event

log = logging.getLogger(__name__)

CommitListener = Callable[[Sequence[Event]], None]
TxHook = Callable[["Tx", Sequence[Event]], Awaitable[None]]


@dataclass
class Tx:
    """One write transaction; ``hooks`` run for every event appended inside it.

    On PostgreSQL the hot statements also use the driver connection under ``conn``
    (``pg_direct.py``), fetched once per transaction into ``driver``."""

    conn: AsyncConnection
    hooks: Sequence[TxHook] = ()
    events: list[Event] = field(default_factory=list)
    postgres: bool = False
    driver: Any = None


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
    async def write(self) -> AsyncIterator[Tx]:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            with self._translated():
                async with self.engine.begin() as conn:
                    tx = Tx(conn, tuple(self._hooks), postgres=self.dialect == "postgresql")
                    yield tx
        if tx.events:
            self.notify(tx.events)

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
