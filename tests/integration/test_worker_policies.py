"""Retry policies and timeouts as the worker applies them: a real worker and SQLite queue.

Flows here are defined in the test (a registry of our own), so each policy is
exercised exactly: a flaky flow that succeeds on its second attempt, a flow that
raises ``DoNotRetry``, and a flow whose class-level timeout stops it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flowyard.adapters.files.local import LocalFileStore, LocalTaskFiles
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.wakeup import PollWaker
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.core.errors import DoNotRetry, FlowFailed, FlowNotFound
from flowyard.core.events import TaskCreated
from flowyard.core.flow import AsyncFlow, Flow, FlowContext, check_cancelled
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import Task, rebuild
from flowyard.services.worker import Worker, WorkerOptions
from tests.support.task_db import open_store


class Flaky(Flow):
    name = "t.flaky"
    retry_on = (FlowFailed,)
    retry_backoff = 0.05
    runs: ClassVar[dict[str, int]] = {}

    def run(self, ctx: FlowContext, params: Any) -> None:
        key = str(ctx.scratch.parent.parent)  # the task folder: one count per task
        self.runs[key] = self.runs.get(key, 0) + 1
        if self.runs[key] == 1:
            raise FlowFailed("first attempt fails")


class Fatal(Flow):
    name = "t.fatal"
    retry_on = (FlowFailed,)
    retry_backoff = 0.05

    def run(self, ctx: FlowContext, params: Any) -> None:
        raise DoNotRetry("bad data: retrying cannot help")


class Slow(Flow):
    name = "t.slow"
    timeout_seconds = 0.3

    def run(self, ctx: FlowContext, params: Any) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            check_cancelled(ctx)
            time.sleep(0.02)


class AsyncWriter(AsyncFlow):
    name = "t.async_writer"

    async def run_async(self, ctx: FlowContext, params: Any) -> None:
        await asyncio.sleep(0.01)
        ctx.progress(0.5, "half")
        ctx.output("out.txt").write_text("written on the event loop")


class AsyncSlow(AsyncFlow):
    name = "t.async_slow"
    timeout_seconds = 0.3

    async def run_async(self, ctx: FlowContext, params: Any) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            check_cancelled(ctx)
            await asyncio.sleep(0.02)


FLOWS = {f.name: f for f in (Flaky, Fatal, Slow, AsyncWriter, AsyncSlow)}


class Registry:
    def get(self, name: str) -> type[Flow]:
        try:
            return FLOWS[name]
        except KeyError:
            raise FlowNotFound(name) from None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlTaskStore]:
    async with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as opened:
        yield opened


async def run_until_done(
    store: SqlTaskStore, root: Path, created: list[TaskCreated], limit: float = 20
) -> list[Task]:
    LocalFileStore(root).mark_root()
    for event in created:
        await store.record(event)
    queue = SqlWorkQueue(store, PollWaker(0.05), lease_seconds=5)
    identity = WorkerIdentity(id="h/t", name="t", host="h", flows=tuple(FLOWS), concurrency=2)
    options = WorkerOptions(heartbeat_seconds=1, poll_interval=0.05, grace_seconds=1)
    worker = Worker(identity, queue, LocalTaskFiles(root), Registry(), options)
    job = asyncio.create_task(worker.run())
    deadline = time.monotonic() + limit
    try:
        while True:
            tasks = [await store.get(e.task_id) for e in created]
            if all(t.state.finished for t in tasks):
                return tasks
            assert time.monotonic() < deadline, tasks
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(job, 10)


def new(flow: str, **kw: Any) -> TaskCreated:
    return TaskCreated(task_id=uuid.uuid4(), flow=flow, max_attempts=3, **kw)


async def test_policies_retry_refuse_and_time_out(store: SqlTaskStore, tmp_path: Path) -> None:
    flaky, fatal, slow, quick = new("t.flaky"), new("t.fatal"), new("t.slow"), new("t.slow")
    quick = quick.model_copy(update={"timeout_seconds": 0.1})
    done = await run_until_done(store, tmp_path / "files", [flaky, fatal, slow, quick])
    by_flow = {t.id: t for t in done}
    ok = by_flow[flaky.task_id]
    assert (ok.state, ok.attempt, ok.error) == ("succeeded", 2, None)
    bad = by_flow[fatal.task_id]
    assert (bad.state, bad.attempt, bad.error) == ("failed", 1, "bad data: retrying cannot help")
    stopped = by_flow[slow.task_id]
    assert (stopped.state, stopped.attempt, stopped.error) == (
        "failed",
        1,
        "timed out after 0.3 s",
    )
    own = by_flow[quick.task_id]
    assert own.error == "timed out after 0.1 s"  # the task's own timeout beats the flow's
    events = await store.events(flaky.task_id)
    assert [e.type for e in events if e.type != "task.progress"] == [
        "task.created",
        "task.claimed",
        "task.requeued",
        "task.claimed",
        "task.done",
    ]
    for task in done:  # the log alone rebuilds every row
        rebuilt = rebuild(list(await store.events(task.id)))
        assert rebuilt is not None
        assert rebuilt.model_dump(exclude={"lease_expires_at"}) == task.model_dump(
            exclude={"lease_expires_at"}
        )


async def test_an_async_flow_keeps_outputs_and_times_out_as_a_thread_flow_does(
    store: SqlTaskStore, tmp_path: Path
) -> None:
    writer, slow = new("t.async_writer"), new("t.async_slow")
    done = {t.id: t for t in await run_until_done(store, tmp_path / "files", [writer, slow])}
    wrote = done[writer.task_id]
    assert (wrote.state, wrote.attempt) == ("succeeded", 1), wrote.error
    assert [ref.path for ref in wrote.outputs] == ["attempts/1/outputs/out.txt"]
    out = tmp_path / "files" / str(writer.task_id) / "attempts" / "1" / "outputs" / "out.txt"
    assert out.read_text() == "written on the event loop"
    stopped = done[slow.task_id]
    assert (stopped.state, stopped.error) == ("failed", "timed out after 0.3 s")
