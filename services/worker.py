"""The worker: claim work, run flows in threads, report progress and results.

The same class runs in every mode; only the ``WorkQueue`` and ``TaskFiles`` it
is given differ. A flow that batches gets same-flow tasks claimed together
(topped up once within the flow's ``batch_window``) and run in one thread, each
task still with its own heartbeats, progress, files and result. It claims only
as many tasks as it has free slots, keeps each lease alive with heartbeats
(every lease/3), stops a flow when its task is cancelled or its lease is lost,
and retries a result until the queue takes it
(a result event is idempotent, so a retry after an outage is harmless).
A task past its timeout (its own ``timeout_seconds``, else its flow's) has its
flow stopped like a cancel, and fails "timed out after N s"; a failure its
flow's retry policy retries is reported as a requeue with a backoff instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from flowyard.core.errors import (
    FlowCancelled,
    FlowFailed,
    FlowNotFound,
    FlowTimedOut,
    InvalidInput,
    LeaseLost,
    Unavailable,
)
from flowyard.core.events import FileRef, TaskDone, TaskProgress, utcnow
from flowyard.core.flow import BatchItem, Flow, run_items
from flowyard.core.ports import AttemptFiles, TaskFiles, WorkerIdentity, WorkQueue
from flowyard.core.retry import after_failure
from flowyard.core.task import Task
from flowyard.services.run_context import RunContext

log = logging.getLogger(__name__)

Maintenance = Callable[[], Awaitable[object]]
T = TypeVar("T")
FINISH_SECONDS = 5.0


class FlowSource:
    """What the worker needs of a flow registry."""

    def get(self, name: str) -> type[Flow]:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass(frozen=True)
class _Run:
    """One task of an attempt in progress, as the worker tracks it."""

    task: Task
    flow: type[Flow]
    params: object
    ctx: RunContext
    files: AttemptFiles


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
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, identity.concurrency), thread_name_prefix="flow"
        )
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._contexts: dict[uuid.UUID, RunContext] = {}
        self._timed_out: dict[uuid.UUID, float] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def busy(self) -> int:
        return len(self._running)

    def cancel(self, task_id: uuid.UUID) -> None:
        """Ask a running flow to stop (cancel request seen on the bus)."""
        ctx = self._contexts.get(task_id)
        if ctx is not None:
            ctx.cancel()

    async def run(self) -> None:
        """Claim and run until ``stop`` is called; then drain within the grace period."""
        await self._retrying(lambda: self.queue.register(self.identity), "register")
        housekeeping = asyncio.create_task(self._housekeeping(), name="worker-housekeeping")
        try:
            await self._claim_loop()
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            await self._drain()

    def stop(self) -> None:
        self._stopping.set()
        self._slot_freed.set()

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            free = self.identity.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                claimed = list(await self.queue.claim(self.identity, free))
            except Unavailable as exc:
                log.warning("claim failed, retrying in %.1fs: %s", backoff, exc.message)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            claimed += await self._fill(claimed, free - len(claimed))
            for batch in self._batches(claimed):
                job = asyncio.create_task(self._execute(batch), name=f"task-{batch[0].id}")
                for task in batch:
                    self._running[task.id] = job
            if not claimed:
                waiter = asyncio.create_task(self.queue.wait_for_work(self.options.poll_interval))
                stopper = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (waiter, stopper):
                    pending.cancel()

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
                for ctx in self._contexts.values():
                    ctx.cancel()
                for job in pending:
                    job.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.queue.close()

    async def _execute(self, batch: list[Task]) -> None:
        try:
            await self._attempt(batch)
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
                self._contexts.pop(task.id, None)
                self._timed_out.pop(task.id, None)
            self._slot_freed.set()

    async def _release(self, task: Task, reason: str) -> None:
        with contextlib.suppress(Unavailable, LeaseLost):
            await asyncio.shield(self.queue.release(self.identity, task, reason))

    async def _attempt(self, batch: list[Task]) -> None:
        """Run one task, or a batch of one flow's tasks in one thread, each reported alone."""
        runs = [run for task in batch if (run := await self._prepare(task)) is not None]
        if not runs:
            return
        guards = [
            asyncio.create_task(guard)
            for run in runs
            for guard in (self._heartbeats(run.task, run.ctx), self._progress(run.task, run.ctx))
        ]
        for run in runs:
            limit = run.task.timeout_seconds or run.flow.timeout_seconds
            if limit:
                guards.append(asyncio.create_task(self._deadline(run, limit)))
        items = [BatchItem(run.ctx, run.params) for run in runs]
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._pool, run_items, runs[0].flow(), items
            )
        finally:
            for guard in guards:
                guard.cancel()
            await asyncio.gather(*guards, return_exceptions=True)
        for run, outcome in zip(runs, outcomes, strict=True):
            try:
                await self._conclude(run, outcome)
            except LeaseLost as exc:  # refused: that attempt went to another worker meanwhile
                log.warning("task %s: %s", run.task.id, exc.message)

    async def _prepare(self, task: Task) -> _Run | None:
        """The task's flow, params and files; a task that cannot start fails at once."""
        try:
            flow_cls = self.flows.get(task.flow)
            params = flow_cls.parse_params(task.params)
            files = await self.files.open_attempt(task)
        except (FlowNotFound, InvalidInput, FlowFailed) as exc:
            await self._finish(task, "failed", error=exc.message)
            self._running.pop(task.id, None)
            return None
        ctx = RunContext(files, self.options.device, asyncio.get_running_loop())
        self._contexts[task.id] = ctx
        return _Run(task, flow_cls, params, ctx, files)

    async def _deadline(self, run: _Run, seconds: float) -> None:
        """Past the task's timeout: stop its flow (cancel its context); it then fails."""
        await asyncio.sleep(seconds)
        log.warning("task %s timed out after %gs; stopping its flow", run.task.id, seconds)
        self._timed_out[run.task.id] = seconds
        run.ctx.cancel()

    async def _conclude(self, run: _Run, outcome: BaseException | None) -> None:
        task, ctx = run.task, run.ctx
        limit = self._timed_out.pop(task.id, None)
        if limit is not None:
            outcome = FlowTimedOut(f"timed out after {limit:g} s")
        status, error, outputs = await self._outcome(run, outcome)
        again = None
        if status == "failed" and outcome is not None:
            policy = run.flow.retry_policy()
            again = after_failure(task, policy, outcome, error or "", utcnow())
        if ctx.lease_lost:
            log.warning("task %s attempt %d was taken away; result dropped", task.id, task.attempt)
        elif again is not None:
            log.info("task %s: %s", task.id, again.reason)
            requeue = again
            await self._retrying(lambda: self.queue.report(self.identity, requeue), "report retry")
        else:
            await self._finish(task, status, error=error, outputs=outputs)
        self._running.pop(task.id, None)

    async def _outcome(
        self, run: _Run, outcome: BaseException | None
    ) -> tuple[str, str | None, tuple[FileRef, ...]]:
        task, ctx, files = run.task, run.ctx, run.files
        cancelled = ctx.cancelled() and not ctx.lease_lost
        if outcome is None and not cancelled:
            return "succeeded", None, await self.files.close_attempt(task, files)
        await self.files.discard_attempt(task, files)
        if isinstance(outcome, FlowCancelled) or (cancelled and outcome is None):
            return "cancelled", "cancelled on request", ()
        if isinstance(outcome, FlowFailed | InvalidInput):
            return "failed", outcome.message, ()
        assert outcome is not None
        log.error("flow %s crashed on task %s", task.flow, task.id, exc_info=outcome)
        if cancelled:
            return "cancelled", "cancelled on request", ()
        return "failed", f"{type(outcome).__name__}: {outcome}", ()

    async def _finish(
        self,
        task: Task,
        status: str,
        *,
        error: str | None = None,
        outputs: tuple[FileRef, ...] = (),
    ) -> None:
        done = TaskDone(
            task_id=task.id,
            flow=task.flow,
            owner=task.owner,
            attempt=task.attempt,
            status=status,  # type: ignore[arg-type]
            error=error,
            outputs=outputs,
            worker_id=self.identity.id,
        )
        await self._retrying(lambda: self.queue.report(self.identity, done), "report result")

    async def _retrying(self, call: Callable[[], Awaitable[None]], what: str) -> None:
        """Keep trying through a database or NATS outage; the call must be idempotent."""
        backoff = 0.2
        while True:
            try:
                await call()
                return
            except Unavailable as exc:
                log.warning("%s failed, retrying in %.1fs: %s", what, backoff, exc.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _heartbeats(self, task: Task, ctx: RunContext) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            try:
                beat = await finish_despite_cancel(self.queue.heartbeat(self.identity, task))
            except Unavailable as exc:
                log.warning("heartbeat for %s failed: %s", task.id, exc.message)
                continue
            except LeaseLost as exc:
                log.warning("task %s: %s; stopping its flow", task.id, exc.message)
                ctx.lease_lost = True
                ctx.cancel()
                return
            if beat.cancel_requested:
                ctx.cancel()

    async def _progress(self, task: Task, ctx: RunContext) -> None:
        while True:
            await ctx.changed.wait()
            # throttled from the first change on: a flow done within one interval sends none
            await asyncio.sleep(self.options.progress_interval)
            ctx.changed.clear()
            latest = ctx.take_progress()
            if latest is None:
                continue
            event = TaskProgress(
                task_id=task.id,
                flow=task.flow,
                owner=task.owner,
                attempt=task.attempt,
                progress=latest[0],
                message=latest[1],
            )
            try:
                await finish_despite_cancel(self.queue.report(self.identity, event))
            except Unavailable as exc:
                log.debug("progress of %s dropped: %s", task.id, exc.message)
            except LeaseLost as exc:
                log.warning("task %s: %s; stopping its flow", task.id, exc.message)
                ctx.lease_lost = True
                ctx.cancel()
                return


async def finish_despite_cancel(call: Awaitable[T]) -> T:
    """Let a short database call end even when the caller is cancelled meanwhile, then cancel.

    Cancelling a query mid-flight makes the driver cancel it on the server and the
    pool throw the connection away: one reconnect per task when a flow ends while
    its progress is being written. Finishing a call of a few milliseconds is cheaper,
    and the progress event then lands before the task's result. A call that hangs
    (an unreachable database) is cancelled after ``FINISH_SECONDS`` all the same.
    """
    inner = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        _, pending = await asyncio.wait({inner}, timeout=FINISH_SECONDS)
        for job in pending:
            job.cancel()
        await asyncio.gather(inner, return_exceptions=True)
        raise
