"""How the NATS scheduler sizes a round by the workers' slots (no NATS, no database)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import cast

from flowyard.bus.nats.dispatch import Work, WorkDispatcher
from flowyard.bus.nats.scheduler import Scheduler
from flowyard.core.errors import FlowyardError
from flowyard.core.events import TaskCreated
from flowyard.core.ports import Sizer
from flowyard.core.task import Task, apply

Slots = list[tuple[str | None, set[str], int]]
PAIR = ("admin", "debug.sleep")


class Records:
    """Queued work of one pair, and the workers' slots as the database would announce them."""

    def __init__(self, queued: int) -> None:
        self.queued = [
            apply(None, TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep"))
            for _ in range(queued)
        ]
        self.slots: Slots = []
        self.slot_reads = 0
        self.in_use = 0

    async def nats_slots(self, seen_since: datetime) -> Slots:
        self.slot_reads += 1
        return self.slots

    async def take_unsent(
        self, now: datetime, limit: int = 1000, *, size: Sizer | None = None
    ) -> list[Task]:
        n = len(self.queued) if size is None else size({PAIR: self.in_use}).get(PAIR, 0)
        taken, self.queued = self.queued[:n], self.queued[n:]
        self.in_use += len(taken)
        return taken

    async def unmark_sent(self, batch: Sequence[Task]) -> None:
        raise AssertionError("every send succeeds here")

    async def due(self, now: datetime, since: datetime, limit: int = 500) -> list[Task]:
        return []

    async def next_due(self, now: datetime) -> datetime | None:
        return None


class Dispatcher:
    def __init__(self) -> None:
        self.sent: list[Work] = []

    async def send_many(self, batch: Sequence[Work]) -> list[FlowyardError | None]:
        self.sent += batch
        return [None] * len(batch)

    async def wake(self, owner: str, flow: str) -> None:
        return None


def scheduler(records: Records, dispatcher: Dispatcher) -> Scheduler:
    return Scheduler(records, cast(WorkDispatcher, dispatcher), slots_every=60.0)


async def test_a_worker_up_after_an_empty_read_is_not_sent_all_the_waiting_work() -> None:
    records, dispatcher = Records(queued=5), Dispatcher()
    rounds = scheduler(records, dispatcher)
    records.queued, waiting = [], records.queued
    assert await rounds.once() == 0  # no worker yet, nothing queued: an empty answer
    records.queued = waiting
    records.slots = [(None, {"debug.sleep"}, 1)]  # a one-slot worker comes up
    assert await rounds.once() == 1  # sized by its slot, not "no worker: send it all"
    assert records.slot_reads == 2  # the empty answer was not kept for slots_every


async def test_announced_slots_are_reused_between_reads() -> None:
    records, dispatcher = Records(queued=5), Dispatcher()
    records.slots = [(None, {"debug.sleep"}, 2)]
    rounds = scheduler(records, dispatcher)
    assert await rounds.once() == 2
    assert await rounds.once() == 0  # both slots in use
    assert records.slot_reads == 1
