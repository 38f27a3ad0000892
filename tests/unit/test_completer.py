"""The completer groups results that finish while a write is under way (group commit), and
waits briefly for the results of flows still running."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from flowyard.core.errors import LeaseLost, Unavailable
from flowyard.core.events import TaskDone, TaskRequeued, utcnow
from flowyard.core.ports import Refill, Reported, WorkerIdentity
from flowyard.core.task import Task, TaskState
from flowyard.services.completer import Completer

pytestmark = pytest.mark.timeout(30)
WORKER = WorkerIdentity(id="h/w", name="w", host="h", flows=("debug.sleep",))


def done(status: str = "succeeded") -> TaskDone:
    return TaskDone(task_id=uuid.uuid4(), flow="debug.sleep", attempt=1, status=status)  # type: ignore[arg-type]


def claimed_task(worker_id: str) -> Task:
    now = utcnow()
    return Task(
        id=uuid.uuid4(),
        flow="debug.sleep",
        owner="admin",
        state=TaskState.running,
        attempt=1,
        worker_id=worker_id,
        created_at=now,
        updated_at=now,
    )


class SlowQueue:
    """Records batches; each write takes a while; refuses failed results; fails once."""

    def __init__(self, outage: int = 0) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.refills: list[Refill | None] = []
        self.outage = outage

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        await asyncio.sleep(0.05)
        if self.outage:
            self.outage -= 1
            raise Unavailable("database down")
        self.batches.append([e.task_id for e in events])
        self.refills.append(refill)
        refused: list[LeaseLost | None] = [
            LeaseLost("stale") if isinstance(e, TaskDone) and e.status == "failed" else None
            for e in events
        ]
        claimed = [claimed_task(refill.worker.id) for _ in range(refill.limit)] if refill else []
        return Reported(refused, claimed)


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


class Slots:
    """Two slots free once the results end; remembers what each write reserved and filled."""

    def __init__(self) -> None:
        self.held = 0
        self.filled: list[tuple[Refill | None, int]] = []

    def reserve(self, ending: Sequence[uuid.UUID]) -> Refill | None:
        self.held += len(ending)
        return Refill(WORKER, len(ending))

    def fill(self, refill: Refill | None, claimed: Sequence[Task]) -> None:
        self.held -= refill.limit if refill else 0
        self.filled.append((refill, len(claimed)))


async def test_a_write_claims_for_the_slots_its_results_free() -> None:
    queue, slots = SlowQueue(outage=1), Slots()
    completer = Completer(queue, WORKER, slots=slots)  # type: ignore[arg-type]
    writing = asyncio.create_task(completer.report(done()))
    await asyncio.sleep(0.01)  # the first write is under way
    await asyncio.gather(writing, *(completer.report(done()) for _ in range(2)))
    # first write: one result (an outage first, retried with the same reservation), then two
    assert [r.limit if r else 0 for r in queue.refills] == [1, 2]
    assert [(r.limit if r else 0, n) for r, n in slots.filled] == [(1, 1), (2, 2)]
    assert slots.held == 0  # every reservation given back


async def test_results_still_to_come_share_the_write_within_the_linger() -> None:
    queue, coming = SlowQueue(), [3]
    completer = Completer(queue, WORKER, expected=lambda: coming[0], linger=1.0)  # type: ignore[arg-type]
    events = [done() for _ in range(3)]

    async def finish(event: TaskDone, after: float) -> None:
        await asyncio.sleep(after)
        coming[0] -= 1  # its flow ended: its result is no longer to come
        await completer.report(event)

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(finish(e, 0.01 * i) for i, e in enumerate(events)))
    assert queue.batches == [[e.task_id for e in events]]
    # written as soon as the last arrived, not at the end of the linger
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_result_waits_no_longer_than_the_linger() -> None:
    queue = SlowQueue()
    completer = Completer(queue, WORKER, expected=lambda: 1, linger=0.05)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    event = done()
    await completer.report(event)
    waited = asyncio.get_running_loop().time() - started
    assert queue.batches == [[event.task_id]]
    assert 0.05 + 0.05 <= waited < 0.5  # the linger, then the write's own 50 ms


async def test_a_lone_result_is_not_delayed() -> None:
    queue = SlowQueue()
    completer = Completer(queue, WORKER, expected=lambda: 0, linger=5.0)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    await completer.report(done())
    assert asyncio.get_running_loop().time() - started < 1.0
