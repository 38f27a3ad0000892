"""The server's side of sending work over NATS: by priority, as workers have room, when due.

JetStream delivers a flow consumer's messages in the order they were published,
so priority can only be honoured before publishing. With ``gated`` (the default,
setting ``nats_dispatch: priority``) the relay publishes no work: this loop sends
queued tasks' work highest priority first (then oldest), and only as many per
owner and flow as the NATS workers serving them have free slots (their announced
concurrency, minus the attempts they run and the work already sent but not yet
claimed). A higher-priority task created later is therefore sent before lower
ones still waiting in the database. While no NATS worker is online there is
nothing to size the sending by: due work is then sent at once, in priority
order (the stream keeps it in that order for the first worker).
``tasks.work_sent_at`` marks work that is out (set before publishing,
compare-and-set, so two servers never both send it; undone when the publish
fails); a retry and a backoff clear it, since their next attempt needs a message
of its own.

Without ``gated`` (``nats_dispatch: fifo``) the relay sends work at once, in
creation order, and this loop only sends what waits for a ``not_before``
(``run_at``/``delay_seconds``, or a retry's backoff), with ``Nats-Msg-Id``
``work:<task>:<attempt>`` so two servers send it once; a due task it missed (a
server down longer than ``lookback``) is found by the reconciler.

Tasks scheduled for later are never sent early in either mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from flowyard.bus.nats.dispatch import Work, WorkDispatcher, created_of
from flowyard.core.backoff import Backoff
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import Event, TaskCreated, TaskRequeued, utcnow
from flowyard.core.ports import Sizer
from flowyard.core.task import Task

log = logging.getLogger(__name__)

_SENT_KEPT = 100_000


class DueRecords(Protocol):
    async def due(self, now: datetime, since: datetime, limit: int = 500) -> list[Task]: ...

    async def next_due(self, now: datetime) -> datetime | None: ...

    async def nats_slots(self, seen_since: datetime) -> list[tuple[str | None, set[str], int]]: ...

    async def take_unsent(
        self, now: datetime, limit: int = 1000, *, size: Sizer | None = None
    ) -> list[Task]: ...

    async def unmark_sent(self, batch: Sequence[Task]) -> None: ...


def free_slots(
    slots: list[tuple[str | None, set[str], int]],
    in_use: dict[tuple[str, str], int],
    prefetch: int = 0,
) -> dict[tuple[str, str], int]:
    """Free slots per ``(owner, flow)`` a task of that pair could use (pure, for tests).

    An admin's worker (owner None) serves every owner: its slots count for each, so
    the sum is an upper bound when one worker serves several owners or flows.
    ``prefetch``: tasks sent ahead per slot, waiting in the stream for it to free.
    """

    def capacity(owner: str, flow: str) -> int:
        total = sum(n for who, flows, n in slots if flow in flows and who in (None, owner))
        return total * (1 + prefetch)

    pairs = set(in_use)
    free: dict[tuple[str, str], int] = {}
    for owner, flow in pairs:
        free[(owner, flow)] = capacity(owner, flow) - in_use[(owner, flow)]
    return free


class Scheduler:
    def __init__(
        self,
        records: DueRecords,
        dispatcher: WorkDispatcher,
        *,
        interval: float = 1.0,
        lookback: float = 600.0,
        gated: bool = True,
        offline_after: float = 60.0,
        slots_every: float = 1.0,
        prefetch: int = 0,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        """``slots_every``: how long the workers' announced slots are reused between reads
        (they change when a worker starts or stops, not with every task).
        ``after_round``: called when a round ends, whatever its outcome (the server wakes
        its relay then, so the two do not contend while work is being sent)."""
        self.after_round = after_round
        self.records = records
        self.dispatcher = dispatcher
        self.interval = interval
        self.lookback = timedelta(seconds=lookback)
        self.gated = gated
        self.offline_after = timedelta(seconds=offline_after)
        self.slots_every = slots_every
        self.prefetch = prefetch
        self._sent: OrderedDict[tuple[uuid.UUID, int], None] = OrderedDict()
        self._kick = asyncio.Event()
        self._slots: list[tuple[str | None, set[str], int]] = []
        self._slots_read_at = -math.inf
        self._next_due: datetime | None = None
        self._next_due_read_at = -math.inf
        self.sent = 0

    def kick(self, events: Sequence[Event] | None = None) -> None:
        """New events may have made work sendable (a new task, a freed slot)."""
        if events is None or any(_scheduled(event) for event in events):
            self._next_due_read_at = -math.inf  # something may now be due sooner
        self._kick.set()

    async def run(self) -> None:
        backoff = Backoff(first=0.5)
        while True:
            self._kick.clear()
            try:
                await self.once()
                wait = await self._until_next()
                backoff.succeeded()
            except Unavailable as exc:
                wait = backoff.failed()  # a kick still ends the pause early
                log.warning("scheduler paused, retrying in %.1fs: %s", wait, exc.message)
            finally:
                if self.after_round is not None:
                    self.after_round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)

    async def _until_next(self) -> float:
        """Seconds until the next scheduled task is due (at most ``interval``).

        Read again once per ``interval``, after a kick with scheduled work, or once the
        last answer is due; not after every round."""
        now = utcnow()
        stale = time.monotonic() - self._next_due_read_at >= self.interval
        if stale or (self._next_due is not None and self._next_due <= now):
            self._next_due = await self.records.next_due(now)
            self._next_due_read_at = time.monotonic()
        if self._next_due is None:
            return self.interval
        return max(0.0, min(self.interval, (self._next_due - now).total_seconds()))

    async def once(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        return await (self._gated(now) if self.gated else self._due(now))

    async def _worker_slots(self, now: datetime) -> list[tuple[str | None, set[str], int]]:
        """The workers' announced slots, reused for ``slots_every`` unless none was found:
        a worker that came up since must not find all the waiting work sent at once (the
        no-worker rule) because an empty answer was kept."""
        stale = time.monotonic() - self._slots_read_at >= self.slots_every
        if stale or not self._slots:
            self._slots = await self.records.nats_slots(now - self.offline_after)
            self._slots_read_at = time.monotonic()
        return self._slots

    async def _gated(self, now: datetime) -> int:
        """Send the highest-priority due work that the NATS workers have room for.

        A round is one transaction: it counts the slots in use and the work waiting
        per owner and flow, takes what has room and marks it sent; then the messages
        go out in priority order, their PubAcks awaited together.
        """
        slots = await self._worker_slots(now)
        if slots:

            def room(in_use: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
                return free_slots(slots, in_use, self.prefetch)

            chosen = await self.records.take_unsent(now, size=room)
        else:
            # no NATS worker announced yet (or none online): nothing to size the sending by,
            # so work goes out at once, in priority order, as before (the stream keeps it)
            chosen = await self.records.take_unsent(now)
        if not chosen:
            return 0
        errors = await self.dispatcher.send_many([_work(task) for task in chosen])
        failed = [task for task, error in zip(chosen, errors, strict=True) if error is not None]
        if failed:
            with contextlib.suppress(Unavailable):  # not out: a later round sends them
                await self.records.unmark_sent(failed)
        for task, error in zip(chosen, errors, strict=True):
            if error is not None and not isinstance(error, Unavailable):
                log.error("work for task %s not sent: %s", task.id, error.message)
        sent = [task for task, error in zip(chosen, errors, strict=True) if error is None]
        await self._wake({(task.owner, task.flow) for task in sent})
        self.sent += len(sent)
        outage = next((e for e in errors if isinstance(e, Unavailable)), None)
        if outage is not None:
            raise outage
        return len(sent)

    async def _due(self, now: datetime) -> int:
        """Send the work of every task due now that this process has not sent yet."""
        sent = 0
        woken: set[tuple[str, str]] = set()
        for task in await self.records.due(now, now - self.lookback):
            key = (task.id, task.attempt)
            if key in self._sent:
                continue
            try:
                await self._send(task)
            except Unavailable:
                raise
            except FlowyardError as exc:  # not transient: the reconciler tries again later
                log.error("due work for task %s not sent: %s", task.id, exc.message)
                continue
            self._sent[key] = None
            while len(self._sent) > _SENT_KEPT:
                self._sent.popitem(last=False)
            woken.add((task.owner, task.flow))
            sent += 1
        await self._wake(woken)
        self.sent += sent
        return sent

    async def _send(self, task: Task) -> None:
        work = _work(task)
        await self.dispatcher.send(work.created, base=work.base, msg_id=work.msg_id)

    async def _wake(self, woken: set[tuple[str, str]]) -> None:
        for owner, flow in sorted(woken):
            await self.dispatcher.wake(owner, flow)


def _work(task: Task) -> Work:
    """A queued task's work message; its id names the attempt, so two servers send it once."""
    return Work(created_of(task), task.attempt, f"work:{task.id}:{task.attempt}")


def _scheduled(event: Event) -> bool:
    """An event that puts a task's next attempt in the future (``not_before``)."""
    return isinstance(event, TaskCreated | TaskRequeued) and event.not_before is not None
