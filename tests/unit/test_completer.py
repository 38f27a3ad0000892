"""The completer groups results that finish while a write is under way (group commit)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from flowyard.core.errors import LeaseLost, Unavailable
from flowyard.core.events import TaskDone, TaskRequeued
from flowyard.core.ports import WorkerIdentity
from flowyard.services.completer import Completer

pytestmark = pytest.mark.timeout(30)
WORKER = WorkerIdentity(id="h/w", name="w", host="h", flows=("debug.sleep",))


def done(status: str = "succeeded") -> TaskDone:
    return TaskDone(task_id=uuid.uuid4(), flow="debug.sleep", attempt=1, status=status)  # type: ignore[arg-type]


class SlowQueue:
    """Records batches; each write takes a while; refuses failed results; fails once."""

    def __init__(self, outage: int = 0) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.outage = outage

    async def report_many(
        self, worker: WorkerIdentity, events: Sequence[TaskDone | TaskRequeued]
    ) -> list[LeaseLost | None]:
        await asyncio.sleep(0.05)
        if self.outage:
            self.outage -= 1
            raise Unavailable("database down")
        self.batches.append([e.task_id for e in events])
        return [
            LeaseLost("stale") if isinstance(e, TaskDone) and e.status == "failed" else None
            for e in events
        ]


async def test_one_result_is_written_at_once_and_the_rest_together() -> None:
    queue = SlowQueue()
    completer = Completer(queue, WORKER)  # type: ignore[arg-type]
    first = done()
    writing = asyncio.create_task(completer.report(first))
    await asyncio.sleep(0.01)  # the first write is under way
    rest = [done() for _ in range(5)]
    await asyncio.gather(writing, *(completer.report(e) for e in rest))
    assert queue.batches == [[first.task_id], [e.task_id for e in rest]]
    assert completer.batches == 2


async def test_each_caller_learns_its_own_refusal() -> None:
    completer = Completer(SlowQueue(), WORKER)  # type: ignore[arg-type]
    ok, stale = done(), done("failed")
    results = await asyncio.gather(
        completer.report(ok), completer.report(stale), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], LeaseLost)


async def test_an_outage_is_waited_out_and_the_batch_written_once() -> None:
    queue = SlowQueue(outage=1)
    completer = Completer(queue, WORKER)  # type: ignore[arg-type]
    event = done()
    await completer.report(event)
    assert queue.batches == [[event.task_id]]


async def test_a_cancelled_caller_does_not_cancel_the_write() -> None:
    queue = SlowQueue()
    completer = Completer(queue, WORKER)  # type: ignore[arg-type]
    event = done()
    caller = asyncio.create_task(completer.report(event))
    await asyncio.sleep(0.01)
    caller.cancel()
    await completer.settle(within=1.0)
    assert queue.batches == [[event.task_id]]
