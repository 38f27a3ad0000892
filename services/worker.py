"""The worker: claim work, hand it to the attempt runner, drain on stop.

The same class runs in every mode; only the ``WorkQueue`` and ``TaskFiles`` it
is given differ. It claims only as many tasks as it has free slots: a slot is
free when no flow runs in it and no claim for it is under way. A busy worker's
claims ride the writes of its results (the completer's ``Refill``), which fill
the slots those results free; the claim loop takes what is left, and waits. A
flow that batches gets same-flow tasks claimed together (topped up once within
the flow's ``batch_window``) and run in one thread, each task still with its own
heartbeats, progress, files and result (``attempt_runner.py``). On ``stop`` it
waits up to ``grace_seconds`` for running flows, then releases what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from flowyard.core.backoff import Backoff
from flowyard.core.errors import FlowNotFound, LeaseLost, Unavailable
from flowyard.core.ports import FlowSource, Refill, TaskFiles, WorkerIdentity, WorkQueue
from flowyard.core.task import Task
from flowyard.services.attempt_runner import AttemptRunner, RunnerOptions, retrying

log = logging.getLogger(__name__)

Maintenance = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_seconds: float = 10.0
    progress_interval: float = 0.2
    poll_interval: float = 2.0
    grace_seconds: float = 30.0
    device: str = "cpu"
    batch_limit: int = 0
    """Caps every flow's batch size (0: no cap; 1: never batch)."""


class Worker:
    def __init__(
        self,
        identity: WorkerIdentity,
        queue: WorkQueue,
        files: TaskFiles,
        flows: FlowSource,
        options: WorkerOptions,
        maintenance: Maintenance | None = None,
    ) -> None:
        self.identity = identity
        self.queue = queue
        self.files = files
        self.flows = flows
        self.options = options
        self.maintenance = maintenance
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._reserved = 0
        """Slots held for claims under way (the claim loop's, or a write's ``Refill``)."""
        self._releasing: set[asyncio.Task[None]] = set()
        self._runner = AttemptRunner(
            identity,
            queue,
            files,
            flows,
            RunnerOptions(options.heartbeat_seconds, options.progress_interval, options.device),
            concluded=self._concluded,
            slots=self,
        )
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()

    def _concluded(self, task_id: uuid.UUID) -> None:
        self._running.pop(task_id, None)

    @property
    def busy(self) -> int:
        return len(self._running)

    def _free(self) -> int:
        return self.identity.concurrency - len(self._running) - self._reserved

    def reserve(self, ending: Sequence[uuid.UUID]) -> Refill | None:
        """Slots for a claim in the write of these results: those they free, and any free.

        Only flows that do not batch are claimed this way; a batch is formed (and
        topped up within its window) by the claim loop.
        """
        if self._stopping.is_set():
            return None
        flows = tuple(f for f in self.identity.flows if self._batch_size(f) <= 1)
        free = self._free() + sum(1 for task_id in set(ending) if task_id in self._running)
        if free <= 0 or not flows:
            return None
        self._reserved += free
        return Refill(dataclasses.replace(self.identity, flows=flows), free)

    def fill(self, refill: Refill | None, claimed: Sequence[Task]) -> None:
        if refill is None:
            return
        self._reserved -= refill.limit
        if not self._stopping.is_set():
            self._start(list(claimed))
            return
        for task in claimed:  # stopped while that write was under way: give them back
            job = asyncio.create_task(self._release(task, "worker stopping"))
            self._releasing.add(job)
            job.add_done_callback(self._releasing.discard)

    def cancel(self, task_id: uuid.UUID) -> None:
        """Ask a running flow to stop (cancel request seen on the bus)."""
        self._runner.cancel(task_id)

    async def run(self) -> None:
        """Claim and run until ``stop`` is called; then drain within the grace period."""
        await retrying(lambda: self.queue.register(self.identity), "register")
        housekeeping = asyncio.create_task(self._housekeeping(), name="worker-housekeeping")
        upkeep = [
            asyncio.create_task(self._runner.keep_leases(), name="worker-leases"),
            asyncio.create_task(self._runner.keep_progress(), name="worker-progress"),
        ]
        try:
            await self._claim_loop()
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            try:
                await self._drain()  # flows still running keep their leases meanwhile
            finally:
                for job in upkeep:
                    job.cancel()
                await asyncio.gather(*upkeep, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()
        self._slot_freed.set()

    async def _claim_loop(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        while not self._stopping.is_set():
            free = self._free()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._reserved += free
            pause = 0.0
            try:
                claimed = list(await self.queue.claim(self.identity, free))
                claimed += await self._fill(claimed, free - len(claimed))
            except Unavailable as exc:
                pause = backoff.failed()
                log.warning("claim failed, retrying in %.1fs: %s", pause, exc.message)
                claimed = []
            finally:
                self._reserved -= free
            if pause:
                await self._sleep(pause)
                continue
            backoff.succeeded()
            self._start(claimed)
            if not claimed:
                waiter = asyncio.create_task(self.queue.wait_for_work(self.options.poll_interval))
                stopper = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (waiter, stopper):
                    pending.cancel()

    def _start(self, claimed: list[Task]) -> None:
        for batch in self._batches(claimed):
            job = asyncio.create_task(self._execute(batch), name=f"task-{batch[0].id}")
            for task in batch:
                self._running[task.id] = job

    def _batch_size(self, flow: str) -> int:
        try:
            size = max(1, self.flows.get(flow).batch_size)
        except FlowNotFound:
            return 1
        limit = self.options.batch_limit
        return min(size, limit) if limit > 0 else size

    async def _fill(self, claimed: list[Task], free: int) -> list[Task]:
        """Top up a partial batch: wait the flow's window once, then claim more of that flow."""
        more: list[Task] = []
        for flow in dict.fromkeys(t.flow for t in claimed):
            size = self._batch_size(flow)
            have = sum(1 for t in claimed if t.flow == flow)
            want = min(size - have, free - len(more))
            if size <= 1 or want <= 0:
                continue
            await self._sleep(self.flows.get(flow).batch_window)
            only_this_flow = dataclasses.replace(self.identity, flows=(flow,))
            with contextlib.suppress(Unavailable):  # a partial batch is still a batch
                more += await self.queue.claim(only_this_flow, want)
        return more

    def _batches(self, claimed: list[Task]) -> list[list[Task]]:
        """Same-flow tasks in chunks of the flow's batch size; other tasks alone."""
        by_flow: dict[str, list[Task]] = {}
        for task in claimed:
            by_flow.setdefault(task.flow, []).append(task)
        batches: list[list[Task]] = []
        for flow, tasks in by_flow.items():
            size = self._batch_size(flow)
            batches += [tasks[i : i + size] for i in range(0, len(tasks), size)]
        return batches

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            try:
                await self.queue.register(self.identity)
                if self.maintenance is not None:
                    await self.maintenance()
            except Unavailable as exc:
                log.warning("housekeeping skipped: %s", exc.message)
            except Exception:  # one bad round must not stop registering and reaping for good
                log.exception("housekeeping round failed")

    async def _drain(self) -> None:
        if self._running:
            log.info("waiting up to %.0fs for %d flows", self.options.grace_seconds, self.busy)
            _, pending = await asyncio.wait(
                list(self._running.values()), timeout=self.options.grace_seconds
            )
            if pending:
                log.warning("grace period over: releasing %d unfinished tasks", len(pending))
                for ctx in self._runner.contexts.values():
                    ctx.cancel()
                for job in pending:
                    job.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        self._runner.pool.shutdown(wait=False, cancel_futures=True)
        await self._runner.completer.settle(within=self.options.grace_seconds)
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=self.options.grace_seconds)
        await self.queue.close()

    async def _execute(self, batch: list[Task]) -> None:
        try:
            await self._runner.run(batch)
        except asyncio.CancelledError:
            for task in batch:
                if task.id in self._running:  # not concluded yet
                    await self._release(task, "worker stopped before the flow finished")
            raise
        except LeaseLost as exc:  # a late result refused: the attempt went to another worker
            log.warning("%s", exc.message)
        finally:
            for task in batch:
                self._running.pop(task.id, None)
                self._runner.forget(task.id)
            self._slot_freed.set()

    async def _release(self, task: Task, reason: str) -> None:
        with contextlib.suppress(Unavailable, LeaseLost):
            await asyncio.shield(self.queue.release(self.identity, task, reason))
