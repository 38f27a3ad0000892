"""What a flow is, and what it may ask of the worker that runs it.

A flow is a class with a name, a version, a pydantic ``Params`` model, declared
inputs and outputs, and a synchronous ``run``. A flow that gains from running
several tasks at once (a model on a GPU) sets ``batch_size`` above 1 and
implements ``run_batch``; the worker then claims same-flow tasks together and
still reports each task on its own. Workers call ``run`` in a thread
so torch never blocks the event loop. A flow whose work waits rather than
computes (a model server over HTTP, a database) may be an ``AsyncFlow``
instead: its ``run_async`` is awaited on the worker's event loop, with no
thread. The ``FlowContext`` is the flow's only
window on the outside: progress, cancellation, files, scratch space, device.
Flows import ``core`` and torch, nothing else of ours, so the same flow runs
unchanged in every mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowyard.core.errors import FlowCancelled, InvalidInput
from flowyard.core.retry import RetryPolicy


class InputSpec(BaseModel):
    """One input file a flow expects; ``media`` lists accepted kinds, e.g. ``image``."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    media: tuple[str, ...] = ()
    required: bool = True


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    media_type: str = "application/octet-stream"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlowContext(Protocol):
    """The worker's side of a running flow."""

    @property
    def device(self) -> str:
        """``cuda`` when a GPU is present (and allowed), else ``cpu``."""
        ...

    @property
    def scratch(self) -> Path:
        """A private folder removed after the attempt."""
        ...

    def input(self, name: str) -> Path:
        """The local path of a declared input; raises ``InvalidInput`` when absent."""
        ...

    def output(self, name: str) -> Path:
        """Where to write a declared output."""
        ...

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress 0..1; cheap to call often (the worker throttles)."""
        ...

    def cancelled(self) -> bool:
        """True once cancellation was requested; long loops should check it."""
        ...


class Flow(ABC):
    """Base class of every flow. Subclasses set the class variables and ``run``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[InputSpec, ...]] = ()
    outputs: ClassVar[tuple[OutputSpec, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules ``run`` imports that may be missing; without them the flow is unavailable."""
    extra: ClassVar[str | None] = None
    """The ``flowyard[extra]`` that installs ``requires``, named in the reason."""
    batch_size: ClassVar[int] = 1
    """Most tasks run together by ``run_batch``; 1: the flow does not batch."""
    batch_window: ClassVar[float] = 0.02
    """Seconds a worker waits for more same-flow tasks to fill a partial batch."""
    max_attempts: ClassVar[int | None] = None
    """Attempts a task of this flow gets (None: the ``max_attempts`` setting); a task may
    set its own."""
    retry_on: ClassVar[tuple[type[BaseException], ...]] = ()
    """Errors whose attempt runs again (after a backoff) while attempts are left; empty:
    a failure ends the task. ``DoNotRetry`` is never retried."""
    retry_backoff: ClassVar[float] = 1.0
    """Seconds: the first retry waits up to this (full jitter), doubling with each attempt."""
    retry_backoff_max: ClassVar[float] = 300.0
    """The longest wait between two attempts."""
    timeout_seconds: ClassVar[float | None] = None
    """A task of this flow that runs longer fails "timed out after N s" (None: no limit);
    a task may set its own ``timeout_seconds``."""

    @abstractmethod
    def run(self, ctx: FlowContext, params: Any) -> None:
        """Do the work; write each output to ``ctx.output(name)``; raise to fail."""

    def run_batch(self, items: Sequence[BatchItem]) -> Sequence[BaseException | None]:
        """Run several tasks at once; one outcome per item (None: it succeeded).

        Raise to fail the batch as a whole: the worker then runs the items one by
        one, so a batch-level problem never loses a task. Return an exception for
        an item to fail only that item.
        """
        return [run_one(self, item) for item in items]

    @classmethod
    def retry_policy(cls) -> RetryPolicy:
        return RetryPolicy(cls.retry_on, cls.retry_backoff, cls.retry_backoff_max)

    @classmethod
    def parse_params(cls, raw: dict[str, Any]) -> BaseModel:
        """Validate params, naming the bad field in the error."""
        try:
            return cls.Params.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(["params", *(str(p) for p in first["loc"])])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"{field}: {message}", field=field) from None

    @classmethod
    def describe(cls) -> FlowInfo:
        return FlowInfo(
            name=cls.name,
            version=cls.version,
            description=cls.description,
            batch_size=cls.batch_size,
            params_schema=cls.Params.model_json_schema(),
            inputs=cls.inputs,
            outputs=cls.outputs,
        )


class AsyncFlow(Flow):
    """A flow awaited on the worker's event loop instead of run in a thread.

    For work that waits rather than computes: a task then costs no thread and no
    hand-over of the interpreter's lock and back (0.15-0.2 ms of CPU per task on a
    small VM). ``run_async`` must never block: a computing step stalls every other
    task of the worker, and its heartbeats; such work belongs in ``Flow.run``.
    Cancellation and timeouts are cooperative, as for every flow (``ctx.cancelled()``
    between steps); a worker that stops past its grace period cancels the coroutine.
    """

    def run(self, ctx: FlowContext, params: Any) -> None:
        raise TypeError(f"flow {self.name} is an AsyncFlow: workers await its run_async")

    @abstractmethod
    async def run_async(self, ctx: FlowContext, params: Any) -> None:
        """Do the work, awaiting what it waits for; as ``Flow.run`` otherwise."""

    async def run_batch_async(self, items: Sequence[BatchItem]) -> Sequence[BaseException | None]:
        """As ``Flow.run_batch``: one outcome per item; raise to fail the batch as a whole."""
        return [await run_one_async(self, item) for item in items]


@dataclass(frozen=True)
class BatchItem:
    """One task of a batch: its own context (progress, cancel, files) and parsed params."""

    ctx: FlowContext
    params: Any


def run_one(flow: Flow, item: BatchItem) -> BaseException | None:
    """``run`` one item, turning its failure into its outcome."""
    try:
        flow.run(item.ctx, item.params)
    except Exception as exc:  # noqa: BLE001 - the item's outcome; the worker classifies it
        return exc
    return None


async def run_one_async(flow: AsyncFlow, item: BatchItem) -> BaseException | None:
    """``run_async`` one item, turning its failure into its outcome."""
    try:
        await flow.run_async(item.ctx, item.params)
    except Exception as exc:  # noqa: BLE001 - the item's outcome; the worker classifies it
        return exc
    return None


def run_items(flow: Flow, items: Sequence[BatchItem]) -> list[BaseException | None]:
    """The outcome of every item: batched when the flow batches, one by one otherwise.

    A ``run_batch`` that raises, or returns the wrong number of outcomes, is not
    trusted: every item runs again alone.
    """
    if _batched(flow, items):
        try:
            outcomes = list(flow.run_batch(items))
        except Exception:  # noqa: BLE001 - the batch failed as a whole: run items alone
            outcomes = []
        if len(outcomes) == len(items):
            return outcomes
    return [run_one(flow, item) for item in items]


async def run_items_async(
    flow: AsyncFlow, items: Sequence[BatchItem]
) -> list[BaseException | None]:
    """``run_items`` for an ``AsyncFlow``, with the same distrust of a failed batch."""
    if _batched(flow, items):
        try:
            outcomes = list(await flow.run_batch_async(items))
        except Exception:  # noqa: BLE001 - the batch failed as a whole: run items alone
            outcomes = []
        if len(outcomes) == len(items):
            return outcomes
    return [await run_one_async(flow, item) for item in items]


def _batched(flow: Flow, items: Sequence[BatchItem]) -> bool:
    return len(items) > 1 and type(flow).batch_size > 1


class FlowInfo(BaseModel):
    """What the API and CLI show of a flow."""

    name: str
    version: str
    description: str
    batch_size: int = 1
    unavailable: str | None = Field(
        default=None, description="why this process cannot run the flow (None: it can)"
    )
    params_schema: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()


def check_cancelled(ctx: FlowContext) -> None:
    """Raise ``FlowCancelled`` when cancellation was requested; call between steps."""
    if ctx.cancelled():
        raise FlowCancelled()
