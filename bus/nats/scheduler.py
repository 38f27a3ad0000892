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
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from flowyard.bus.nats.dispatch import WorkDispatcher, created_of
from flowyard.core.backoff import Backoff
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import utcnow
from flowyard.core.task import Task

log = logging.getLogger(__name__)

_SENT_KEPT = 100_000


class DueRecords(Protocol):
    async def due(self, now: datetime, since: datetime, limit: int = 500) -> list[Task]: ...

    async def next_due(self, now: datetime) -> datetime | None: ...

    async def nats_slots(self, seen_since: datetime) -> list[tuple[str | None, set[str], int]]: ...

    async def slots_in_use(self) -> dict[tuple[str, str], int]: ...

    async def unsent(
        self,
        now: datetime,
        limit: int = 1000,
        *,
        room: Mapping[tuple[str, str], int] | None = None,
    ) -> list[Task]: ...

    async def unsent_pairs(self, now: datetime) -> set[tuple[str, str]]: ...

    async def mark_sent(self, batch: Sequence[Task], at: datetime | None) -> list[bool]: ...


def free_slots(
    slots: list[tuple[str | None, set[str], int]], in_use: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """Free slots per ``(owner, flow)`` a task of that pair could use (pure, for tests).

    An admin's worker (owner None) serves every owner: its slots count for each, so
    the sum is an upper bound when one worker serves several owners or flows.
    """

    def capacity(owner: str, flow: str) -> int:
        return sum(n for who, flows, n in slots if flow in flows and who in (None, owner))

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
    ) -> None:
        self.records = records
        self.dispatcher = dispatcher
        self.interval = interval
        self.lookback = timedelta(seconds=lookback)
        self.gated = gated
        self.offline_after = timedelta(seconds=offline_after)
        self._sent: OrderedDict[tuple[uuid.UUID, int], None] = OrderedDict()
        self._kick = asyncio.Event()
        self.sent = 0

    def kick(self, _events: object = None) -> None:
        """New events may have made work sendable (a new task, a freed slot)."""
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)

    async def _until_next(self) -> float:
        now = utcnow()
        nxt = await self.records.next_due(now)
        if nxt is None:
            return self.interval
        return max(0.0, min(self.interval, (nxt - now).total_seconds()))

    async def once(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        return await (self._gated(now) if self.gated else self._due(now))

    async def _gated(self, now: datetime) -> int:
        """Send the highest-priority due work that the NATS workers have room for.

        A round reads only what it can send (per owner and flow, as many as have room),
        marks it all sent in one transaction, then publishes it in priority order.
        """
        slots = await self.records.nats_slots(now - self.offline_after)
        if slots:
            in_use = await self.records.slots_in_use()
            waiting = await self.records.unsent_pairs(now)
            room = free_slots(slots, {pair: in_use.get(pair, 0) for pair in waiting})
            chosen = await self.records.unsent(now, room=room)
        else:
            # no NATS worker announced yet (or none online): nothing to size the sending by,
            # so work goes out at once, in priority order, as before (the stream keeps it)
            chosen = await self.records.unsent(now)
        if not chosen:
            return 0
        marked = await self.records.mark_sent(chosen, now)
        ours = [task for task, mine in zip(chosen, marked, strict=True) if mine]
        sent = 0
        woken: set[tuple[str, str]] = set()
        for index, task in enumerate(ours):
            try:
                await self._send(task)
            except FlowyardError as exc:
                if isinstance(exc, Unavailable):  # this and the rest are not out: later
                    with contextlib.suppress(Unavailable):
                        await self.records.mark_sent(ours[index:], None)
                    raise
                with contextlib.suppress(Unavailable):
                    await self.records.mark_sent([task], None)  # not out: send it again later
                log.error("work for task %s not sent: %s", task.id, exc.message)
                continue
            woken.add((task.owner, task.flow))
            sent += 1
        await self._wake(woken)
        self.sent += sent
        return sent

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
        await self.dispatcher.send(
            created_of(task), base=task.attempt, msg_id=f"work:{task.id}:{task.attempt}"
        )

    async def _wake(self, woken: set[tuple[str, str]]) -> None:
        for owner, flow in sorted(woken):
            await self.dispatcher.wake(owner, flow)
