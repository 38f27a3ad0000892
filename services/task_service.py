"""Use cases of the server: create, read, cancel, retry, reprioritize and delete tasks.

Every read and action is scoped to what the caller may see: someone else's task
is ``TaskNotFound``, exactly as a missing one. Validation happens before
anything is stored, and a task's files are written before its ``task.created``
event: a request that fails half-way removes what it wrote, so nothing
half-stored is ever visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flowyard.adapters.files.local import LocalFileStore
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.core.errors import (
    FlowNotFound,
    IllegalTransition,
    InvalidInput,
    StaleAttempt,
    TaskFinished,
    TaskNotFound,
)
from flowyard.core.events import (
    ChainStep,
    Event,
    FileRef,
    TaskCancelRequested,
    TaskCreated,
    TaskDone,
    TaskReprioritized,
    utcnow,
)
from flowyard.core.files import safe_file_name
from flowyard.core.flow import Flow
from flowyard.core.identity import Principal
from flowyard.core.task import RETRYABLE, Task, TaskState, retry_event
from flowyard.flows.registry import FlowRegistry

log = logging.getLogger(__name__)


def request_digest(request: NewTask, params: dict[str, Any], filenames: Sequence[str]) -> str:
    """What makes two creates "the same request" for an idempotency key."""
    data = {
        "flow": request.flow,
        "params": params,
        "priority": request.priority,
        "max_attempts": request.max_attempts,
        "run_at": request.run_at.isoformat() if request.run_at else None,
        "delay_seconds": request.delay_seconds,
        "timeout_seconds": request.timeout_seconds,
        "then": [step.model_dump(mode="json") for step in request.then],
        "inputs": list(filenames),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class EventSource(Protocol):
    """Live events (``bus.inprocess.EventHub``): a queue that yields None once closed."""

    def subscription(self) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[Any]]: ...


def check_idempotency_key(key: str | None) -> None:
    if key is None:
        return
    if not 1 <= len(key) <= 200 or not all("!" <= ch <= "~" for ch in key):
        raise InvalidInput(
            "Idempotency-Key: 1 to 200 visible ASCII characters (no spaces)",
            field="Idempotency-Key",
        )


MAX_CHAIN_DEPTH = 5
MAX_CHAIN_STEPS = 20
MAX_ATTEMPTS = 100
"""The most attempts one task may ask for."""
MAX_DELAY_SECONDS = 366 * 24 * 3600
"""The furthest a task may be scheduled: about a year."""


@dataclass
class Upload:
    filename: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class NewTask:
    flow: str
    params: dict[str, Any]
    priority: int = 0
    owner: str = "admin"
    max_attempts: int | None = None
    """None: the flow's ``max_attempts``, else the server's setting."""
    run_at: datetime | None = None
    delay_seconds: float | None = None
    timeout_seconds: float | None = None
    then: tuple[ChainStep, ...] = ()
    """Follow-ups created when this task succeeds (``services/chains.py``)."""
    idempotency_key: str | None = None
    """A repeat within the window returns the first task (per owner); see ``create_keyed``."""


class TaskService:
    def __init__(
        self,
        store: SqlTaskStore,
        files: LocalFileStore,
        flows: FlowRegistry,
        *,
        max_upload_bytes: int,
        max_attempts: int,
        retry_skip: int = 0,
        schedule_tolerance: float = 60.0,
        idempotency_window: float = 24 * 3600.0,
    ) -> None:
        """``retry_skip``: attempt numbers a retry leaves out (see ``core.task.retry_event``);
        ``schedule_tolerance``: seconds a ``run_at`` may lie in the past (clock skew)."""
        self.store = store
        self.files = files
        self.flows = flows
        self.max_upload_bytes = max_upload_bytes
        self.max_attempts = max_attempts
        self.retry_skip = retry_skip
        self.schedule_tolerance = schedule_tolerance
        self.idempotency_window = timedelta(seconds=idempotency_window)

    def flow(self, name: str) -> type[Flow]:
        try:
            return self.flows.get(name)
        except FlowNotFound as exc:
            raise InvalidInput(f"flow: {exc.message}", field="flow") from None

    def validate(self, request: NewTask, upload_count: int) -> type[Flow]:
        """Everything that can be checked before a byte is written."""
        flow_cls = self.flow(request.flow)
        flow_cls.parse_params(request.params)
        self.not_before(request)
        check_idempotency_key(request.idempotency_key)
        self.check_chain(flow_cls, request.then, "then")
        if request.timeout_seconds is not None and not 0 < request.timeout_seconds <= (
            MAX_DELAY_SECONDS
        ):
            raise InvalidInput(
                "timeout_seconds: must be more than 0 (and at most a year)",
                field="timeout_seconds",
            )
        if request.max_attempts is not None and not 1 <= request.max_attempts <= MAX_ATTEMPTS:
            raise InvalidInput(
                f"max_attempts: must be between 1 and {MAX_ATTEMPTS}", field="max_attempts"
            )
        required = [spec for spec in flow_cls.inputs if spec.required]
        if upload_count < len(required):
            names = ", ".join(spec.name for spec in required)
            raise InvalidInput(
                f"inputs: flow {request.flow!r} needs {len(required)} input file(s) ({names}), "
                f"got {upload_count}",
                field="inputs",
            )
        if upload_count > len(flow_cls.inputs):
            raise InvalidInput(
                f"inputs: flow {request.flow!r} takes at most {len(flow_cls.inputs)} input "
                f"file(s), got {upload_count}",
                field="inputs",
            )
        return flow_cls

    def not_before(self, request: NewTask, now: datetime | None = None) -> datetime | None:
        """When a scheduled task becomes claimable; None: at once (also for a run_at just past)."""
        now = now or utcnow()
        if request.run_at is not None and request.delay_seconds is not None:
            raise InvalidInput("run_at: give run_at or delay_seconds, not both", field="run_at")
        if request.delay_seconds is not None:
            if not 0 <= request.delay_seconds <= MAX_DELAY_SECONDS:
                raise InvalidInput(
                    f"delay_seconds: must be between 0 and {MAX_DELAY_SECONDS}",
                    field="delay_seconds",
                )
            at = now + timedelta(seconds=request.delay_seconds)
        elif request.run_at is not None:
            at = request.run_at
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at < now - timedelta(seconds=self.schedule_tolerance):
                raise InvalidInput(
                    f"run_at: {at.isoformat()} is in the past (more than "
                    f"{self.schedule_tolerance:g}s ago; schedule_tolerance_seconds)",
                    field="run_at",
                )
            if at > now + timedelta(seconds=MAX_DELAY_SECONDS):
                raise InvalidInput("run_at: at most a year from now", field="run_at")
        else:
            return None
        return at if at > now else None

    def check_chain(
        self, parent: type[Flow], steps: Sequence[ChainStep], field: str, depth: int = 0
    ) -> None:
        """Refused at create, not at run: unknown flows, bad params, inputs a parent lacks."""
        if depth >= MAX_CHAIN_DEPTH and steps:
            raise InvalidInput(f"{field}: chains nest at most {MAX_CHAIN_DEPTH} deep", field=field)
        if len(steps) > MAX_CHAIN_STEPS:
            raise InvalidInput(f"{field}: at most {MAX_CHAIN_STEPS} follow-ups", field=field)
        for index, step in enumerate(steps):
            where = f"{field}[{index}]"
            try:
                child = self.flows.get(step.flow)
            except FlowNotFound as exc:
                raise InvalidInput(f"{where}.flow: {exc.message}", field=f"{where}.flow") from None
            try:
                child.parse_params(step.params)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}.{exc.message}", field=f"{where}.{exc.field}") from None
            if not -1000 <= step.priority <= 1000:
                raise InvalidInput(
                    f"{where}.priority: must be between -1000 and 1000", field=f"{where}.priority"
                )
            needed = sum(1 for spec in child.inputs if spec.required)
            if needed > len(parent.outputs):
                raise InvalidInput(
                    f"{where}.flow: {step.flow!r} needs {needed} input file(s), but "
                    f"{parent.name!r} makes {len(parent.outputs)} output(s)",
                    field=f"{where}.flow",
                )
            self.check_chain(child, step.then, f"{where}.then", depth + 1)

    def attempts_for(self, request: NewTask, flow_cls: type[Flow]) -> int:
        return request.max_attempts or flow_cls.max_attempts or self.max_attempts

    async def create(self, request: NewTask, uploads: Sequence[Upload] = ()) -> Task:
        return (await self.create_keyed(request, uploads))[0]

    async def create_keyed(
        self, request: NewTask, uploads: Sequence[Upload] = ()
    ) -> tuple[Task, bool]:
        """The task and whether it is new: False when ``idempotency_key`` was used before
        (within the window, same owner) for the same request; another request is a 409."""
        flow_cls = self.validate(request, len(uploads))
        for upload in uploads:  # every name is checked before the first byte is written
            safe_file_name(upload.filename)
        params = flow_cls.parse_params(request.params).model_dump(mode="json")
        task_id = uuid.uuid4()
        try:
            refs: list[FileRef] = []
            for spec, upload in zip(flow_cls.inputs, uploads, strict=False):
                refs.append(
                    await self.files.save_input(
                        task_id,
                        input_name=spec.name,
                        filename=upload.filename,
                        chunks=upload.chunks,
                        limit=self.max_upload_bytes,
                    )
                )
            event = TaskCreated(
                task_id=task_id,
                flow=request.flow,
                owner=request.owner,
                params=params,
                inputs=tuple(refs),
                priority=request.priority,
                max_attempts=self.attempts_for(request, flow_cls),
                not_before=self.not_before(request),
                timeout_seconds=request.timeout_seconds,
                then=request.then,
            )
            if not refs:
                # workers on the shared folder expect every task to have one
                await self.files.ensure_task_dir(task_id)
            if request.idempotency_key is None:
                return await self.store.record(event), True
            digest = request_digest(request, params, [u.filename for u in uploads])
            task, fresh = await self.store.record_keyed(
                event, request.idempotency_key, digest, self.idempotency_window
            )
        except BaseException:
            await self.files.delete_task(task_id)
            raise
        if not fresh:
            await self.files.delete_task(task_id)  # the files of the copy that was not made
        return task, fresh

    async def create_batch(self, requests: Sequence[NewTask], limit: int) -> list[Task]:
        """Tasks without files, in one transaction: one bad item and nothing is stored.

        Every item is checked first; the error names the item (``tasks[3].params.seconds``).
        """
        if len(requests) > limit:
            raise InvalidInput(
                f"tasks: {len(requests)} tasks, more than the limit of {limit} per batch "
                "(max_batch_tasks)",
                field="tasks",
            )
        now = utcnow()
        created: list[TaskCreated] = []
        for index, request in enumerate(requests):
            try:
                flow_cls = self.validate(request, 0)
                params = flow_cls.parse_params(request.params).model_dump(mode="json")
                not_before = self.not_before(request, now)
            except InvalidInput as exc:
                field = f"tasks[{index}].{exc.field or 'body'}"
                raise InvalidInput(f"tasks[{index}].{exc.message}", field=field) from None
            created.append(
                TaskCreated(
                    task_id=uuid.uuid4(),
                    flow=request.flow,
                    owner=request.owner,
                    params=params,
                    priority=request.priority,
                    max_attempts=self.attempts_for(request, flow_cls),
                    not_before=not_before,
                    timeout_seconds=request.timeout_seconds,
                    then=request.then,
                )
            )
        try:
            for event in created:
                await self.files.ensure_task_dir(event.task_id)
            return await self.store.record_all(created)
        except BaseException:
            for event in created:
                await self.files.delete_task(event.task_id)
            raise

    async def get(self, task_id: uuid.UUID, caller: Principal) -> Task:
        task = await self.store.get(task_id)
        if not caller.sees(task.owner):
            raise TaskNotFound(f"no task has id {task_id}")
        return task

    async def list(
        self,
        caller: Principal,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]:
        """A user's listing is their own, whatever ``owner`` they ask for."""
        scope = caller.owner_filter()
        if scope is not None and owner not in (None, scope):
            return []
        return await self.store.list(
            state=state, flow=flow, owner=scope or owner, limit=limit, offset=offset
        )

    async def events(self, task_id: uuid.UUID, caller: Principal) -> Sequence[Event]:
        events = await self.store.events(task_id)
        if not events or not caller.sees(events[0].owner):
            raise TaskNotFound(f"no task has id {task_id}")
        return events

    async def cancel(
        self,
        task_id: uuid.UUID,
        caller: Principal,
        *,
        reason: str | None = None,
        stage: str | None = None,
    ) -> Task:
        """Queued: cancelled now. Running: the worker is asked to stop and reports cancelled.

        ``stage`` (with ``reason``): an interruption, e.g. the client of a create-and-wait
        left; the task records when, and what it was doing then.
        """
        task = await self.get(task_id, caller)
        if task.state.finished:
            raise TaskFinished(f"task {task_id} already {task.state}; nothing to cancel")
        if stage is not None:
            task = await self.store.record(
                TaskCancelRequested(
                    task_id=task.id,
                    flow=task.flow,
                    owner=task.owner,
                    attempt=task.attempt,
                    reason=reason,
                    stage=stage,
                )
            )
        if task.state is TaskState.queued:
            try:
                return await self.store.record(
                    TaskDone(
                        task_id=task.id,
                        flow=task.flow,
                        owner=task.owner,
                        attempt=task.attempt,
                        status="cancelled",
                        error="cancelled before it started" + (f" ({reason})" if reason else ""),
                    )
                )
            except (IllegalTransition, StaleAttempt):  # claimed meanwhile: ask the worker
                task = await self.store.get(task_id)
        return await self.store.record(
            TaskCancelRequested(
                task_id=task.id, flow=task.flow, owner=task.owner, attempt=task.attempt
            )
        )

    async def wait(
        self,
        task_id: uuid.UUID,
        caller: Principal,
        seconds: float,
        events: EventSource,
        *,
        gone: Callable[[], Awaitable[bool]] | None = None,
        cancel_on_gone: bool = False,
        poll: float = 0.5,
    ) -> Task:
        """The task once finished, or as it is after ``seconds``.

        Woken by the task's events; re-read every ``poll`` seconds too (an event the
        live hub dropped must not stretch the wait). ``gone`` tells whether the client
        left; with ``cancel_on_gone`` its unfinished task is then cancelled, recording
        the stage it was at.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async with events.subscription() as queue:
            task = await self.get(task_id, caller)
            while not task.state.finished:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return task
                if gone is not None and await gone():
                    if cancel_on_gone:
                        return await self._interrupted(task, caller)
                    return task
                with contextlib.suppress(TimeoutError):
                    while True:
                        event = await asyncio.wait_for(queue.get(), min(remaining, poll))
                        if event is None:
                            return await self.get(task_id, caller)  # the server is stopping
                        if event.task_id == task_id:
                            break
                task = await self.get(task_id, caller)
        return task

    async def _interrupted(self, task: Task, caller: Principal) -> Task:
        stage = f"{task.state} (attempt {task.attempt}, {task.progress:.0%})"
        if task.message:
            stage += f": {task.message}"
        log.info("task %s: the client left while it was %s; cancelling", task.id, stage)
        try:
            return await self.cancel(task.id, caller, reason="the client disconnected", stage=stage)
        except TaskFinished:
            return await self.get(task.id, caller)

    async def retry(self, task_id: uuid.UUID, caller: Principal) -> Task:
        """A failed or cancelled task is queued again as a new attempt, with its history."""
        task = await self.get(task_id, caller)
        if task.state not in RETRYABLE:
            raise IllegalTransition(
                f"task {task_id} is {task.state}: only a failed or cancelled task can be retried"
            )
        event = retry_event(task, attempts=self.max_attempts, skip=self.retry_skip)
        return await self.store.record(event)

    async def set_priority(self, task_id: uuid.UUID, caller: Principal, priority: int) -> Task:
        """Only while queued: a running or finished task's priority means nothing any more."""
        task = await self.get(task_id, caller)
        if task.state is not TaskState.queued:
            raise IllegalTransition(
                f"task {task_id} is {task.state}: only a queued task's priority can change"
            )
        event = TaskReprioritized(
            task_id=task.id,
            flow=task.flow,
            owner=task.owner,
            attempt=task.attempt,
            priority=priority,
        )
        return await self.store.record(event)

    async def delete(self, task_id: uuid.UUID, caller: Principal) -> None:
        task = await self.get(task_id, caller)
        if task.state is TaskState.running:
            await self.cancel(task_id, caller)
        await self.store.delete(task_id)
        await self.files.delete_task(task_id)
