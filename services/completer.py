"""Group commit of attempts' ends: results that finish together share one write.

A worker's results arrive one by one from its flows. The completer records a
result at once when no other flow of the worker is still running; while some are,
it waits up to ``LINGER_SECONDS`` for their results, so flows that started
together (claimed in one write) end in one write too. Whatever finishes while a
write is under way is recorded in the next one, all together
(``WorkQueue.report_many``: one transaction on a database). So an idle worker adds
no delay to a single result, and a busy one pays one transaction per batch
instead of one per task. The write also claims work for
the slots its results free (``Slots``, a ``Refill``): a busy database worker
claims in the transactions of its results, not in transactions of its own.
Each caller still learns its own outcome: ``report`` returns once its result is
recorded, or raises ``LeaseLost`` when that result alone was refused. Outages are
waited out with a backoff (event ids make a repeated write harmless), as a single
report always was.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flowyard.core.backoff import Backoff
from flowyard.core.errors import LeaseLost, Unavailable
from flowyard.core.events import TaskDone, TaskRequeued
from flowyard.core.ports import Refill, WorkerIdentity, WorkQueue
from flowyard.core.task import Task

log = logging.getLogger(__name__)

BATCH_LIMIT = 64
"""Results per write at most: a long transaction holds its rows' locks longer."""

LINGER_SECONDS = 0.005
"""Longest wait for the results of flows still running before a write. Flows claimed
together mostly end within a few milliseconds of each other when short; a long
flow's result is late by this at most."""


class Slots(Protocol):
    """The worker's free slots, which a write of results may fill."""

    def reserve(self, ending: Sequence[uuid.UUID]) -> Refill | None:
        """Hold the slots free once these tasks end, for a claim in their write."""
        ...

    def fill(self, refill: Refill | None, claimed: Sequence[Task]) -> None:
        """Start what the write claimed; give back the rest of the held slots."""
        ...


@dataclass
class _Pending:
    event: TaskDone | TaskRequeued
    recorded: asyncio.Future[None]


class Completer:
    def __init__(
        self,
        queue: WorkQueue,
        identity: WorkerIdentity,
        *,
        limit: int = BATCH_LIMIT,
        slots: Slots | None = None,
        expected: Callable[[], int] | None = None,
        linger: float = LINGER_SECONDS,
    ) -> None:
        """``expected``: how many results are still to come (flows running or ending),
        which a write waits up to ``linger`` for; None writes at once."""
        self.queue = queue
        self.identity = identity
        self.limit = limit
        self.slots = slots
        self.expected = expected
        self.linger = linger
        self._arrived = asyncio.Event()
        self.batches = 0
        """Writes made (results / batches is the batching achieved)."""
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def report(self, event: TaskDone | TaskRequeued) -> None:
        """Record ``event`` with whatever else finishes meanwhile; raise ``LeaseLost`` if
        this result was refused."""
        pending = _Pending(event, asyncio.get_running_loop().create_future())
        # its caller may be gone by then (cancelled): the outcome is still retrieved
        pending.recorded.add_done_callback(_retrieved)
        self._pending.append(pending)
        self._arrived.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="completer")
        # a cancelled caller (grace period over) does not cancel the write of the others
        await asyncio.shield(pending.recorded)

    async def settle(self, within: float) -> None:
        """Wait up to ``within`` seconds for the writes under way (before closing the queue)."""
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer}, timeout=within)

    async def _write_all(self) -> None:
        while self._pending:
            await self._gather()
            batch, self._pending = self._pending[: self.limit], self._pending[self.limit :]
            try:
                outcomes = await self._write(batch)
            except BaseException as exc:
                for pending in batch:
                    if not pending.recorded.done():
                        pending.recorded.set_exception(exc)
                raise
            for pending, refused in zip(batch, outcomes, strict=True):
                if refused is None:
                    pending.recorded.set_result(None)
                else:
                    pending.recorded.set_exception(refused)

    async def _gather(self) -> None:
        """Wait up to ``linger`` while results are still to come, so they share the write."""
        if self.expected is None or self.linger <= 0:
            return
        deadline = asyncio.get_running_loop().time() + self.linger
        while len(self._pending) < self.limit and self.expected() > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._arrived.wait()
            except TimeoutError:
                return

    async def _write(self, batch: list[_Pending]) -> list[LeaseLost | None]:
        events = [pending.event for pending in batch]
        refill = self.slots.reserve([e.task_id for e in events]) if self.slots else None
        claimed: Sequence[Task] = ()
        backoff = Backoff(first=0.2, cap=5.0)
        try:
            while True:
                try:
                    reported = await self.queue.report_many(self.identity, events, refill)
                except Unavailable as exc:
                    pause = backoff.failed()
                    log.warning("report results failed, retrying in %.1fs: %s", pause, exc.message)
                    await asyncio.sleep(pause)
                else:
                    self.batches += 1
                    claimed = reported.claimed
                    return reported.refused
        finally:
            if self.slots is not None:
                self.slots.fill(refill, claimed)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
