"""Flows that only wait: for tests, benchmarks and trying out cancellation and failures.

``debug.sleep`` runs in a worker's thread, as a torch flow does; ``debug.async_sleep``
is its ``AsyncFlow`` twin, awaited on the worker's event loop, as the no-op jobs of
the queues a user compares flowyard with are (coroutines).
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from flowyard.core.errors import FlowFailed
from flowyard.core.flow import AsyncFlow, Flow, FlowContext, check_cancelled

SLICE_SECONDS = 0.05
"""Longest uninterrupted sleep, so a cancel is seen within ~50 ms even in one long step."""


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(
        default=1.0, ge=0, le=3600, description="Total time to wait; 0 makes a no-op task."
    )
    steps: int = Field(
        default=10, ge=1, le=10000, description="How many equal steps, one progress report each."
    )
    fail: str | None = Field(
        default=None, description="When set, fail with this message after the wait."
    )
    transient: str | None = Field(
        default=None,
        description="When set, fail with this message after the wait, as an error the "
        "flow's retry policy retries (with a short backoff) while attempts are left.",
    )


def sleep_unless_cancelled(ctx: FlowContext, seconds: float) -> None:
    """Sleep in short slices, raising ``FlowCancelled`` as soon as a cancel is requested."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        check_cancelled(ctx)
        time.sleep(min(remaining, SLICE_SECONDS))


async def asleep_unless_cancelled(ctx: FlowContext, seconds: float) -> None:
    """``sleep_unless_cancelled``, awaited."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        check_cancelled(ctx)
        await asyncio.sleep(min(remaining, SLICE_SECONDS))


class TransientFailure(FlowFailed):
    """A failure that another attempt may not meet (the ``transient`` param)."""


def end(params: SleepParams) -> None:
    """Fail as the params ask, once the wait is over."""
    if params.fail is not None:
        raise FlowFailed(params.fail)
    if params.transient is not None:
        raise TransientFailure(params.transient)


class Sleep(Flow):
    name = "debug.sleep"
    version = "1"
    description = "Wait in steps, reporting progress; optionally fail. Touches no files."
    Params = SleepParams
    retry_on = (TransientFailure,)
    retry_backoff = 0.2
    retry_backoff_max = 2.0

    def run(self, ctx: FlowContext, params: SleepParams) -> None:
        step_seconds = params.seconds / params.steps
        for i in range(params.steps):
            check_cancelled(ctx)
            if step_seconds > 0:
                sleep_unless_cancelled(ctx, step_seconds)
            ctx.progress((i + 1) / params.steps, f"step {i + 1}/{params.steps}")
        end(params)


class AsyncSleep(AsyncFlow):
    name = "debug.async_sleep"
    version = "1"
    description = (
        "debug.sleep awaited on the worker's event loop (an AsyncFlow): wait in steps, "
        "reporting progress; optionally fail. Touches no files."
    )
    Params = SleepParams
    retry_on = (TransientFailure,)
    retry_backoff = 0.2
    retry_backoff_max = 2.0

    async def run_async(self, ctx: FlowContext, params: SleepParams) -> None:
        step_seconds = params.seconds / params.steps
        for i in range(params.steps):
            check_cancelled(ctx)
            if step_seconds > 0:
                await asleep_unless_cancelled(ctx, step_seconds)
            ctx.progress((i + 1) / params.steps, f"step {i + 1}/{params.steps}")
        end(params)
