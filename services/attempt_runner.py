"""One attempt of a task (or of a batch of one flow's tasks), from open files to result.

The worker hands a claimed batch to ``AttemptRunner.run``: it opens each task's
files, validates its params, runs the flow in a thread (an ``AsyncFlow`` on the
event loop) with a ``RunContext``
while a timeout guard runs beside it (``keep_leases`` renews the leases of all
running flows together, every ``heartbeat_seconds``; ``keep_progress`` sends
each flow's progress at most once per ``progress_interval``),
then reports each task's result on its own. A result is retried through outages
until the queue takes it (the event id makes retries harmless); a failure the
flow's retry policy retries is reported as a requeue with a backoff; a task past
its timeout (its own, else its flow's) has its flow stopped like a cancel and
fails "timed out after N s".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

from flowyard.core.backoff import Backoff
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
from flowyard.core.flow import AsyncFlow, BatchItem, Flow, run_items, run_items_async
from flowyard.core.ports import AttemptFiles, FlowSource, TaskFiles, WorkerIdentity, WorkQueue
from flowyard.core.retry import after_failure
from flowyard.core.task import Task, event_for
from flowyard.services.completer import Completer, Slots
from flowyard.services.run_context import RunContext

log = logging.getLogger(__name__)

T = TypeVar("T")
FINISH_SECONDS = 5.0
MIN_PROGRESS_TICK = 0.01
"""The progress ticker's shortest sleep (``progress_interval`` 0 sends every change)."""
Status = Literal["succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class _Run:
    """One task of an attempt in progress."""

    task: Task
    flow: type[Flow]
    params: object
    ctx: RunContext
    files: AttemptFiles

    @property
    def key(self) -> tuple[uuid.UUID, int]:
        return self.task.id, self.task.attempt


@dataclass(frozen=True)
class RunnerOptions:
    heartbeat_seconds: float
    progress_interval: float
    device: str


class AttemptRunner:
    def __init__(
        self,
        identity: WorkerIdentity,
        queue: WorkQueue,
        files: TaskFiles,
        flows: FlowSource,
        options: RunnerOptions,
        concluded: Callable[[uuid.UUID], None],
        slots: Slots | None = None,
    ) -> None:
        """``concluded`` is told each task whose attempt ended (reported, or given up);
        ``slots``: the worker's, filled by the writes of results (``completer.py``)."""
        self.identity = identity
        self.queue = queue
        self.files = files
        self.flows = flows
        self.options = options
        self.concluded = concluded
        self._ending: set[tuple[uuid.UUID, int]] = set()
        """Attempts started whose result is not yet with the completer: it waits briefly
        for them, so results of flows started together share a write."""
        self.completer = Completer(queue, identity, slots=slots, expected=self._still_ending)
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, identity.concurrency), thread_name_prefix="flow"
        )
        self.contexts: dict[uuid.UUID, RunContext] = {}
        self._flowing: dict[tuple[uuid.UUID, int], tuple[Task, RunContext]] = {}
        """Attempts whose flow is running (by task and attempt: a task requeued meanwhile
        may run its next attempt here too): ``keep_leases`` renews their leases."""
        self._timed_out: dict[uuid.UUID, float] = {}
        self._sending: dict[tuple[uuid.UUID, int], asyncio.Task[None]] = {}
        """Progress writes under way, by attempt (``keep_progress``)."""

    def cancel(self, task_id: uuid.UUID) -> None:
        ctx = self.contexts.get(task_id)
        if ctx is not None:
            ctx.cancel()

    def forget(self, task_id: uuid.UUID) -> None:
        self.contexts.pop(task_id, None)
        self._timed_out.pop(task_id, None)

    async def run(self, batch: list[Task]) -> None:
        """Run one task, or a batch of one flow's tasks in one thread, each reported alone."""
        runs = [run for task in batch if (run := await self._prepare(task)) is not None]
        if not runs:
            return
        guards = [
            asyncio.create_task(self._deadline(run, limit))
            for run in runs
            if (limit := run.task.timeout_seconds or run.flow.timeout_seconds)
        ]
        items = [BatchItem(run.ctx, run.params) for run in runs]
        attempts = [run.key for run in runs]
        self._flowing |= {run.key: (run.task, run.ctx) for run in runs}
        self._ending.update(attempts)
        try:
            try:
                outcomes = await self._run_flow(runs[0].flow(), items)
            finally:
                for key in attempts:
                    self._flowing.pop(key, None)
                for guard in guards:
                    guard.cancel()
                await asyncio.gather(*guards, return_exceptions=True)
                # a progress write under way lands before the result
                sending = [self._sending[key] for key in attempts if key in self._sending]
                if sending:
                    await asyncio.wait(sending)
            # together: a batch's results then share one write
            await asyncio.gather(
                *(self._conclude(run, outcome) for run, outcome in zip(runs, outcomes, strict=True))
            )
        finally:
            self._ending.difference_update(attempts)

    async def _run_flow(self, flow: Flow, items: list[BatchItem]) -> list[BaseException | None]:
        """In a thread of the pool; an ``AsyncFlow`` on this event loop."""
        if isinstance(flow, AsyncFlow):
            return await run_items_async(flow, items)
        return await asyncio.get_running_loop().run_in_executor(self.pool, run_items, flow, items)

    def _still_ending(self) -> int:
        return len(self._ending)

    async def _prepare(self, task: Task) -> _Run | None:
        """The task's flow, params and files; a task that cannot start fails at once."""
        try:
            flow_cls = self.flows.get(task.flow)
            params = flow_cls.parse_params(task.params)
            files = await self.files.open_attempt(task)
        except (FlowNotFound, InvalidInput, FlowFailed) as exc:
            await self.finish(task, "failed", error=exc.message)
            self.concluded(task.id)
            return None
        ctx = RunContext(files, self.options.device)
        self.contexts[task.id] = ctx
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
        self._ending.discard(run.key)  # handed over (or dropped) below: no longer to come
        try:
            if ctx.lease_lost:
                log.warning("task %s attempt %d was taken away; result dropped", *run.key)
            elif again is not None:
                log.info("task %s: %s", task.id, again.reason)
                await self.completer.report(again)
            else:
                await self.finish(task, status, error=error, outputs=outputs)
        except LeaseLost as exc:  # refused: that attempt went to another worker meanwhile
            log.warning("task %s: %s", task.id, exc.message)
        self.concluded(task.id)

    async def _outcome(
        self, run: _Run, outcome: BaseException | None
    ) -> tuple[Status, str | None, tuple[FileRef, ...]]:
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

    async def finish(
        self,
        task: Task,
        status: Status,
        *,
        error: str | None = None,
        outputs: tuple[FileRef, ...] = (),
    ) -> None:
        done = event_for(
            task, TaskDone, status=status, error=error, outputs=outputs, worker_id=self.identity.id
        )
        await self.completer.report(done)

    async def keep_leases(self) -> None:
        """Every ``heartbeat_seconds``, renew the leases of all running flows in one call;
        a lost lease stops its flow, a cancel request cancels it."""
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            flowing = list(self._flowing.values())
            if not flowing:
                continue
            beats = self.queue.heartbeat(self.identity, [task for task, _ in flowing])
            try:
                answers = await finish_despite_cancel(beats)
            except Unavailable as exc:
                log.warning("heartbeat of %d tasks failed: %s", len(flowing), exc.message)
                continue
            for (task, ctx), answer in zip(flowing, answers, strict=True):
                if isinstance(answer, LeaseLost):
                    _lost(task, ctx, answer)
                elif answer.cancel_requested:
                    ctx.cancel()

    async def keep_progress(self) -> None:
        """Send each running flow's latest progress once its first change is one
        ``progress_interval`` old: at most one event per task per interval, none for a
        flow that ends within one, and no per-task timer or wake-up."""
        interval = self.options.progress_interval
        while True:
            await asyncio.sleep(max(interval / 2, MIN_PROGRESS_TICK))
            for key, (task, ctx) in list(self._flowing.items()):
                if key in self._sending or ctx.lease_lost:
                    continue  # the last one is still being written, or the flow is stopping
                latest = ctx.take_progress(held=interval)
                if latest is not None:
                    self._sending[key] = asyncio.create_task(self._send(key, task, ctx, latest))

    async def _send(
        self, key: tuple[uuid.UUID, int], task: Task, ctx: RunContext, latest: tuple[float, str]
    ) -> None:
        event = event_for(task, TaskProgress, progress=latest[0], message=latest[1])
        try:
            await finish_despite_cancel(self.queue.report(self.identity, event))
        except Unavailable as exc:
            log.debug("progress of %s dropped: %s", task.id, exc.message)
        except LeaseLost as exc:
            _lost(task, ctx, exc)
        finally:
            self._sending.pop(key, None)


def _lost(task: Task, ctx: RunContext, exc: LeaseLost) -> None:
    log.warning("task %s: %s; stopping its flow", task.id, exc.message)
    ctx.lease_lost = True
    ctx.cancel()


async def retrying(call: Callable[[], Awaitable[None]], what: str) -> None:
    """Keep trying through a database or NATS outage; the call must be idempotent."""
    backoff = Backoff(first=0.2, cap=5.0)
    while True:
        try:
            await call()
            return
        except Unavailable as exc:
            pause = backoff.failed()
            log.warning("%s failed, retrying in %.1fs: %s", what, pause, exc.message)
            await asyncio.sleep(pause)


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
