"""Wake-ups for database workers in other processes than the server.

``PollWaker`` is the fallback for every database (MariaDB has no NOTIFY): an idle
worker polls with exponential backoff up to ``poll_interval``, and polls fast
again as soon as a claim finds work, so an idle fleet barely loads the database.

On PostgreSQL, ``PgNotifier`` (a ``Database`` hook) sends ``NOTIFY flowyard_work``
with the flow as payload when a task becomes claimable, inside the transaction
that made it so, and ``PgNotifyWaker`` (one LISTEN connection per process)
wakes idle workers within milliseconds. NOTIFY is a hint: the slow poll stays.

A cancel request rides the same way: ``NOTIFY flowyard_cancel`` with the task id,
heard on the worker's LISTEN connection, stops the flow at once instead of at
its next heartbeat (a third of the lease); the heartbeat stays the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence

import psycopg
import psycopg.sql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Database, Tx
from flowyard.core.backoff import Backoff
from flowyard.core.events import Event

log = logging.getLogger(__name__)


def _poll_sooner_or_later(idle: Backoff, found: bool) -> None:
    """After a claim: poll fast again when it found work, else wait twice as long."""
    if found:
        idle.succeeded()
    else:
        idle.failed()


class PollWaker:
    def __init__(self, poll_interval: float, min_interval: float = 0.05) -> None:
        self._idle = Backoff(first=min_interval, cap=poll_interval)
        self._kick = asyncio.Event()

    def clear(self) -> None:
        self._kick.clear()

    def kick(self) -> None:
        self._kick.set()

    def found_work(self, found: bool) -> None:
        _poll_sooner_or_later(self._idle, found)

    async def wait(self, max_wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), min(self._idle.current, max_wait))

    async def close(self) -> None:
        self._kick.set()


WORK_CHANNEL = "flowyard_work"
"""NOTIFY channel for claimable work; the payload is the task's flow."""

EVENTS_CHANNEL = "flowyard_events"
"""NOTIFY channel for 'the event log grew' (the server's event tailer listens)."""

CANCEL_CHANNEL = "flowyard_cancel"
"""NOTIFY channel for 'stop this task': the payload is its id (the worker running it listens)."""

WORK_EVENTS = frozenset({"task.created", "task.requeued", "task.retried"})


_MAX_SUPPRESSED = 10_000
FIRST_LISTEN_SECONDS = 5.0


def listen_uri(engine: AsyncEngine) -> str:
    """The engine's URL for plain psycopg: ``postgresql+psycopg://`` becomes ``postgresql://``."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PgNotifyWaker:
    """LISTEN on a dedicated connection: idle workers start new work within milliseconds.

    NOTIFY is only a hint (it is lost while the connection is down), so ``wait``
    always returns after ``max_wait`` as a slow poll, and while the listening
    connection is down the waker polls with backoff like ``PollWaker`` and
    reconnects in the background. After every (re)connect it wakes once, for
    whatever was committed while nobody listened.
    """

    def __init__(
        self,
        uri: str,
        poll_interval: float,
        *,
        channel: str = WORK_CHANNEL,
        payloads: Collection[str] | None = None,
        min_interval: float = 0.05,
        reconnect_max: float = 5.0,
        also: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        """``also``: more channels on the same connection, each with what to call per payload."""
        self._uri = uri
        self._channel = channel
        self._payloads = frozenset(payloads) if payloads is not None else None
        self._also = dict(also or {})
        self._idle = Backoff(first=min_interval, cap=poll_interval)
        self._reconnect = Backoff(first=0.1, cap=reconnect_max)
        self._kick = asyncio.Event()
        self._closed = asyncio.Event()
        self._listening = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    async def start(self) -> None:
        """Start listening in the background; wait (bounded) for the first LISTEN."""
        self._task = asyncio.create_task(self._listen_forever(), name=f"listen-{self._channel}")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait(
            {ready, self._task}, timeout=FIRST_LISTEN_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        if not self._listening:
            log.warning("LISTEN %s is not ready yet: polling meanwhile", self._channel)

    def clear(self) -> None:
        self._kick.clear()

    def kick(self) -> None:
        self._kick.set()

    def found_work(self, found: bool) -> None:
        _poll_sooner_or_later(self._idle, found)

    async def wait(self, max_wait: float) -> None:
        timeout = max_wait if self._listening else min(self._idle.current, max_wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), timeout)

    async def close(self) -> None:
        self._closed.set()
        self._kick.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen_forever(self) -> None:
        while not self._closed.is_set():
            try:
                await self._listen()
                self._reconnect.succeeded()
            except (psycopg.Error, OSError) as exc:
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                log.warning(
                    "LISTEN %s lost (%s): polling, reconnecting in %.1fs",
                    self._channel,
                    reason,
                    self._reconnect.current,
                )
            finally:
                self._listening = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._reconnect.failed())

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._uri,
            autocommit=True,
            connect_timeout=5,
            # a silently dead peer (no RST) is noticed within about 20 s
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=2,
        )
        async with conn:
            for channel in (self._channel, *self._also):
                await conn.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel))
                )
            self._listening = True
            self._ready.set()
            self._kick.set()  # whatever was committed while nobody listened
            async for note in conn.notifies():
                handler = self._also.get(note.channel)
                if handler is not None:
                    handler(note.payload)
                elif self._payloads is None or note.payload in self._payloads:
                    self._kick.set()


WINDOWS: Mapping[str, float] = {WORK_CHANNEL: 0.005, EVENTS_CHANNEL: 0.1}
"""Seconds between two NOTIFYs of one channel and payload that ride in transactions.

NOTIFY takes a database-wide lock at commit, so a busy server keeps them rare; but
work created a little after other work of its flow waits for its trailing NOTIFY,
so the work channel's window is short: an idle worker then hears of work created
at up to 200 per second per flow without delay, and of more within 5 ms (its busy
peers claim in their own writes meanwhile). The events channel only paces the
server's event tailer, which can wait."""


class PgNotifier:
    """Sends NOTIFY for appended events inside their transaction, debounced River-style.

    Per (channel, payload), at most one NOTIFY per window (``WINDOWS``) rides in a
    transaction. A suppressed one is not lost: once its transaction committed, a
    trailing NOTIFY goes out at the end of the window, outside any transaction.
    Install with ``db.in_transaction(notifier)`` and ``db.on_commit(notifier.on_commit)``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        windows: Mapping[str, float] = WINDOWS,
        events: bool = True,
    ) -> None:
        self._engine = engine
        self._windows = windows
        self._events = events
        self._sent: dict[tuple[str, str], float] = {}
        self._suppressed: dict[uuid.UUID, set[tuple[str, str]]] = {}
        self._pending: set[tuple[str, str]] = set()
        self._trailing: asyncio.Task[None] | None = None
        self._more = asyncio.Event()

    def _keys(self, batch: Sequence[Event]) -> dict[tuple[str, str], uuid.UUID]:
        """Each channel/payload of the batch, with the id of an event that needs it."""
        keys: dict[tuple[str, str], uuid.UUID] = {}
        for event in batch:
            if event.type in WORK_EVENTS:
                keys.setdefault((WORK_CHANNEL, event.flow), event.id)
            elif event.type == "task.cancel_requested":
                keys.setdefault((CANCEL_CHANNEL, str(event.task_id)), event.id)
            if self._events:
                keys.setdefault((EVENTS_CHANNEL, ""), event.id)
        return keys

    def _due_at(self, key: tuple[str, str]) -> float:
        """When a NOTIFY of ``key`` may next ride (a cancel's is never held back)."""
        last = self._sent.get(key)
        window = self._windows.get(key[0], 0.0)
        return -math.inf if last is None or window <= 0 else last + window

    def sort_out(self, batch: Sequence[Event], now: float) -> list[tuple[str, str]]:
        """The NOTIFYs this batch sends now (marked sent at ``now``); the rest are held
        back for the trailing NOTIFY of their window, once their transaction commits."""
        due: list[tuple[str, str]] = []
        for key, event_id in self._keys(batch).items():
            if now < self._due_at(key):
                self._suppressed.setdefault(event_id, set()).add(key)
                continue
            if key[0] != CANCEL_CHANNEL:  # one per task and rare: not remembered
                self._sent[key] = now
            due.append(key)
        return due

    async def __call__(self, tx: Tx, batch: Sequence[Event]) -> None:
        due = self.sort_out(batch, asyncio.get_running_loop().time())
        if due:  # queued in a pipelined write's pipeline
            pg = await pg_direct.connection(tx)
            if pg is not None:
                await pg_direct.notify(pg, due)
        if len(self._suppressed) > _MAX_SUPPRESSED:  # rolled-back writes never commit: flush all
            for keys in self._suppressed.values():
                self._pending.update(keys)
            self._suppressed.clear()

    def on_commit(self, events: Sequence[Event]) -> None:
        """Commit listener: schedule the trailing NOTIFY of what this commit had suppressed."""
        if self._suppressed:
            for event in events:
                self._pending.update(self._suppressed.pop(event.id, ()))
        if not self._pending:
            return
        self._more.set()  # a trailing NOTIFY under way may now be due sooner
        if self._trailing is None or self._trailing.done():
            self._trailing = asyncio.get_running_loop().create_task(
                self._send_trailing(), name="pg-notify-trailing"
            )

    async def _send_trailing(self) -> None:
        """Each pending NOTIFY at the end of its own window (the work channel's is short)."""
        loop = asyncio.get_running_loop()
        while self._pending:
            self._more.clear()
            wait = min(map(self._due_at, self._pending)) - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._more.wait(), wait)
            now = loop.time()
            keys = {key for key in self._pending if self._due_at(key) <= now}
            self._pending -= keys
            if keys:  # none when woken early, or a NOTIFY in a transaction went out meanwhile
                await self._send(keys)

    async def _send(self, keys: set[tuple[str, str]]) -> None:
        now = asyncio.get_running_loop().time()
        for key in keys:
            self._sent[key] = now
        try:
            async with self._engine.begin() as conn:  # its COMMIT sends the NOTIFYs
                await pg_direct.notify(await pg_direct.driver(conn), sorted(keys))
        except (SQLAlchemyError, OSError) as exc:  # a hint only: pollers catch up
            log.debug("trailing NOTIFY failed: %s", exc)

    async def close(self) -> None:
        """Send what is still pending now, so a stopping process loses no wake-up."""
        if self._trailing is not None and not self._trailing.done():
            self._trailing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trailing
        if self._pending:
            keys, self._pending = self._pending, set()
            await self._send(keys)


def install_pg_notifier(db: Database, *, events: bool = True) -> PgNotifier | None:
    """Wire NOTIFY into ``db``'s writes on PostgreSQL; other databases get nothing."""
    if db.dialect != "postgresql":
        return None
    notifier = PgNotifier(db.engine, events=events)
    db.in_transaction(notifier)
    db.on_commit(notifier.on_commit)
    return notifier
