"""The worker against the in-memory ports: no subprocess, no database, no network.

Each test starts ``Worker.run`` in the test's event loop on ``MemoryWorkQueue``
and ``MemoryFiles``, creates tasks by recording ``task.created``, and waits for
the task's row to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from flowyard.adapters.memory import MemoryFiles, MemoryTaskStore, MemoryWorkQueue
from flowyard.core.events import TaskCancelRequested, TaskCreated, TaskDone, TaskRequeued
from flowyard.core.flow import AsyncFlow, BatchItem, Flow, FlowContext, InputSpec, OutputSpec
from flowyard.core.ports import Refill, Reported, WorkerIdentity
from flowyard.core.task import Task, TaskState, event_for
from flowyard.flows.debug import AsyncSleep, Sleep
from flowyard.flows.registry import FlowRegistry
from flowyard.services.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)


class Shout(Flow):
    """Upper-cases its input into ``out.txt``."""

    name = "test.shout"
    inputs = (InputSpec(name="text"),)
    outputs = (OutputSpec(name="out.txt"),)

    def run(self, ctx: FlowContext, params: Any) -> None:
        ctx.progress(0.5, "reading")
        ctx.output("out.txt").write_bytes(ctx.input("text").read_bytes().upper())


class Batched(Flow):
    name = "test.batched"
    batch_size = 3
    batch_window = 0.2
    seen: ClassVar[list[int]] = []

    def run(self, ctx: FlowContext, params: Any) -> None:
        Batched.seen.append(1)

    def run_batch(self, items: Sequence[BatchItem]) -> Sequence[BaseException | None]:
        Batched.seen.append(len(items))
        return [None] * len(items)


class AsyncBatched(AsyncFlow):
    """Awaited on the event loop; records the thread it ran on and its batches."""

    name = "test.async_batched"
    batch_size = 3
    batch_window = 0.2
    threads: ClassVar[set[int]] = set()
    seen: ClassVar[list[int]] = []

    async def run_async(self, ctx: FlowContext, params: Any) -> None:
        AsyncBatched.threads.add(threading.get_ident())
        AsyncBatched.seen.append(1)
        await asyncio.sleep(0)

    async def run_batch_async(self, items: Sequence[BatchItem]) -> Sequence[BaseException | None]:
        AsyncBatched.threads.add(threading.get_ident())
        AsyncBatched.seen.append(len(items))
        await asyncio.sleep(0)
        return [None] * len(items)


@dataclass
class Yard:
    store: MemoryTaskStore
    files: MemoryFiles
    worker: Worker
    changed: asyncio.Event
    """Set on every commit: waiting for a state needs no polling."""

    async def create(self, flow: str, params: dict[str, Any] | None = None, **fields: Any) -> Task:
        task_id = uuid.uuid4()
        event = TaskCreated(
            task_id=task_id, flow=flow, owner="alice", params=params or {}, **fields
        )
        return await self.store.record(event)

    async def until(self, task_id: uuid.UUID, *states: TaskState) -> Task:
        while (task := await self.store.get(task_id)).state not in states:
            self.changed.clear()
            await self.changed.wait()
        return task

    async def finished(self, task_id: uuid.UUID) -> Task:
        return await self.until(task_id, TaskState.succeeded, TaskState.failed, TaskState.cancelled)


@pytest.fixture
async def yard() -> AsyncIterator[Yard]:
    store = MemoryTaskStore()
    changed = asyncio.Event()
    store.on_commit(lambda _events: changed.set())
    files = MemoryFiles()
    registry = FlowRegistry({f.name: f for f in (Sleep, AsyncSleep, Shout, Batched, AsyncBatched)})
    identity = WorkerIdentity(
        id="worker-1", name="w1", host="test", flows=registry.names(), concurrency=4
    )
    options = WorkerOptions(
        heartbeat_seconds=0.05, progress_interval=0.01, poll_interval=0.1, grace_seconds=1.0
    )
    worker = Worker(identity, MemoryWorkQueue(store), files, registry, options)
    running = asyncio.create_task(worker.run())
    try:
        yield Yard(store, files, worker, changed)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)


async def test_a_claimed_task_runs_and_its_outputs_are_kept(yard: Yard) -> None:
    task_id = uuid.uuid4()
    ref = await yard.files.save_input(
        task_id, input_name="text", filename="in.txt", chunks=_chunks(b"hello"), limit=100
    )
    created = TaskCreated(task_id=task_id, flow="test.shout", owner="alice", inputs=(ref,))
    await yard.store.record(created)
    done = await yard.finished(task_id)
    assert done.state is TaskState.succeeded, done.error
    assert done.attempt == 1
    assert yard.files.read(done, "out.txt") == b"HELLO"
    kinds = [e.type for e in await yard.store.events(task_id)]
    assert kinds[:2] == ["task.created", "task.claimed"]
    assert kinds[-1] == "task.done"


SLEEPS = pytest.mark.parametrize("sleep", ["debug.sleep", "debug.async_sleep"])
"""The same flow in a thread and as an ``AsyncFlow`` on the event loop."""


@SLEEPS
async def test_a_cancel_request_stops_the_flow(yard: Yard, sleep: str) -> None:
    task = await yard.create(sleep, {"seconds": 30, "steps": 300})
    running = await yard.until(task.id, TaskState.running)
    await yard.store.record(event_for(running, TaskCancelRequested))
    done = await yard.finished(task.id)
    assert done.state is TaskState.cancelled
    assert done.error == "cancelled on request"


@SLEEPS
async def test_a_lost_lease_stops_the_flow_and_drops_its_result(
    yard: Yard, caplog: pytest.LogCaptureFixture, sleep: str
) -> None:
    """The worker learns of it at its next heartbeat (one call for all its running flows;
    one step, so no progress report finds out first)."""
    task = await yard.create(sleep, {"seconds": 30, "steps": 1})
    first = await yard.until(task.id, TaskState.running)
    await yard.store.record(event_for(first, TaskRequeued, reason="taken away"))
    while (again := await yard.store.get(task.id)).attempt < 2:
        yard.changed.clear()
        await yard.changed.wait()
    stopped = f"task {task.id}: task {task.id} attempt 1 is no longer ours; stopping its flow"
    dropped = f"task {task.id} attempt 1 was taken away; result dropped"
    for _ in range(300):  # within a heartbeat or two (0.05 s here)
        if dropped in caplog.messages:
            break
        await asyncio.sleep(0.01)
    assert stopped in caplog.messages
    assert dropped in caplog.messages
    await yard.store.record(event_for(again, TaskCancelRequested))
    await yard.finished(task.id)
    done = [e for e in await yard.store.events(task.id) if isinstance(e, TaskDone)]
    assert [(e.attempt, e.status) for e in done] == [(2, "cancelled")]


@SLEEPS
async def test_a_transient_failure_is_retried_by_the_flows_policy(yard: Yard, sleep: str) -> None:
    task = await yard.create(
        sleep, {"seconds": 0, "steps": 1, "transient": "flaky"}, max_attempts=2
    )
    done = await yard.finished(task.id)
    assert done.state is TaskState.failed
    assert done.attempt == 2
    assert done.error is not None
    assert "flaky" in done.error
    kinds = [e.type for e in await yard.store.events(task.id)]
    assert kinds.count("task.claimed") == 2
    assert "task.requeued" in kinds


async def test_a_task_whose_input_is_missing_fails_at_once(yard: Yard) -> None:
    task = await yard.create("test.shout")
    done = await yard.finished(task.id)
    assert done.state is TaskState.failed
    assert done.attempt == 1
    assert done.error == "inputs: missing input 'text'"


@pytest.mark.parametrize("flow", [Batched, AsyncBatched])
async def test_same_flow_tasks_run_as_one_batch(yard: Yard, flow: type[Batched]) -> None:
    flow.seen.clear()
    yard.worker.stop()  # claim all three together: queue them before a worker looks
    store, files = yard.store, yard.files
    tasks = [await yard.create(flow.name) for _ in range(3)]
    registry = FlowRegistry({flow.name: flow})
    identity = WorkerIdentity(
        id="worker-2", name="w2", host="test", flows=(flow.name,), concurrency=3
    )
    worker = Worker(identity, MemoryWorkQueue(store), files, registry, WorkerOptions())
    running = asyncio.create_task(worker.run())
    try:
        for task in tasks:
            assert (await yard.finished(task.id)).state is TaskState.succeeded
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert flow.seen == [3]


async def test_an_async_flow_runs_on_the_event_loop_and_a_stop_past_grace_cancels_it(
    yard: Yard,
) -> None:
    AsyncBatched.threads.clear()
    done = await yard.finished((await yard.create(AsyncBatched.name)).id)
    assert done.state is TaskState.succeeded
    assert AsyncBatched.threads == {threading.get_ident()}  # no thread of the pool

    long = await yard.create("debug.async_sleep", {"seconds": 30, "steps": 1})
    await yard.until(long.id, TaskState.running)
    started = time.monotonic()
    yard.worker.stop()  # grace 1 s: then the coroutine is cancelled and the task released
    while (await yard.store.get(long.id)).state is TaskState.running:
        assert time.monotonic() - started < 5
        yard.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(yard.changed.wait(), 1)
    released = await yard.store.get(long.id)
    assert released.state is TaskState.queued
    kinds = [e.type for e in await yard.store.events(long.id)]
    assert kinds[-1] == "task.requeued"


class Counted(Flow):
    """Counts the flows running at once (each holds its slot for a moment)."""

    name = "test.counted"
    lock = threading.Lock()
    now: ClassVar[int] = 0
    most: ClassVar[int] = 0

    def run(self, ctx: FlowContext, params: Any) -> None:
        with Counted.lock:
            Counted.now += 1
            Counted.most = max(Counted.most, Counted.now)
        time.sleep(0.002)
        with Counted.lock:
            Counted.now -= 1


class RefillCounter(MemoryWorkQueue):
    """Claims and writes that take a moment, as a database's do (claims then overlap)."""

    refilled = 0
    most_held = 0

    def _count_held(self) -> None:
        held = sum(1 for t in self.store.tasks() if t.state is TaskState.running)
        RefillCounter.most_held = max(RefillCounter.most_held, held)

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        await asyncio.sleep(0.003)
        claimed = await super().claim(worker, limit)
        self._count_held()
        return claimed

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        await asyncio.sleep(0.003)
        reported = await super().report_many(worker, events, refill)
        RefillCounter.refilled += len(reported.claimed)
        self._count_held()
        return reported


async def test_results_claim_for_their_slots_and_never_one_slot_too_many(yard: Yard) -> None:
    """Writes of results refill the slots they free (the claim loop claims little); the
    flows running at once never exceed the worker's slots."""
    yard.worker.stop()
    tasks = [await yard.create("test.counted") for _ in range(40)]
    registry = FlowRegistry({Counted.name: Counted})
    identity = WorkerIdentity(
        id="worker-3", name="w3", host="test", flows=(Counted.name,), concurrency=3
    )
    queue = RefillCounter(yard.store)
    worker = Worker(identity, queue, yard.files, registry, WorkerOptions(poll_interval=0.05))
    running = asyncio.create_task(worker.run())
    try:
        for task in tasks:
            assert (await yard.finished(task.id)).state is TaskState.succeeded
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert RefillCounter.most_held == 3  # attempts held at once: the slots, never more
    assert Counted.most == 3
    assert RefillCounter.refilled > 5, RefillCounter.refilled  # claims rode results' writes


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_progress_is_sent_at_most_once_per_interval_and_never_after_the_result() -> None:
    """A flow that ends within one interval of its first progress sends none; a long one
    sends its latest about once per interval; all of it lands before ``task.done``."""
    store, changed = MemoryTaskStore(), asyncio.Event()
    store.on_commit(lambda _events: changed.set())
    registry = FlowRegistry({Sleep.name: Sleep, Shout.name: Shout})
    identity = WorkerIdentity(id="w-p", name="wp", host="test", flows=registry.names())
    options = WorkerOptions(heartbeat_seconds=5.0, progress_interval=0.2, poll_interval=0.05)
    files = MemoryFiles()
    worker = Worker(identity, MemoryWorkQueue(store), files, registry, options)
    running = asyncio.create_task(worker.run())
    try:
        quick_id, slow_id = uuid.uuid4(), uuid.uuid4()
        ref = await files.save_input(
            quick_id, input_name="text", filename="in.txt", chunks=_chunks(b"x"), limit=10
        )
        await store.record(
            TaskCreated(task_id=quick_id, flow="test.shout", owner="a", inputs=(ref,))
        )
        slow = {"seconds": 1.0, "steps": 50}  # a change every 20 ms
        await store.record(TaskCreated(task_id=slow_id, flow="debug.sleep", owner="a", params=slow))
        for task_id in (quick_id, slow_id):
            while not (await store.get(task_id)).state.finished:
                changed.clear()
                await changed.wait()
        quick = [e.type for e in await store.events(quick_id)]
        assert "task.progress" not in quick
        kinds = [e.type for e in await store.events(slow_id)]
        sent = kinds.count("task.progress")
        assert 2 <= sent <= 1.0 / 0.2 + 1, kinds
        assert kinds[-1] == "task.done"
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
