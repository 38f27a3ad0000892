"""Retry decisions, as pure functions: does a failed attempt run again, and when.

A flow declares its policy (``core.flow.Flow``: ``retry_on``, ``retry_backoff``,
``retry_backoff_max``); a task's ``max_attempts`` bounds it. The delay is
exponential with full jitter (AWS's "full jitter": a uniform draw between 0 and
``min(max, base * 2**(attempt-1))``), so many tasks failing together do not all
come back at the same moment. ``DoNotRetry`` is never retried, whatever the
policy says; a lease that expired is counted by ``core.task.lease_expired``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from flowyard.core.errors import DoNotRetry, FlowCancelled
from flowyard.core.events import TaskRequeued
from flowyard.core.task import Task, TaskState, event_for


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures run again, and how long to wait before the next attempt."""

    retry_on: tuple[type[BaseException], ...] = ()
    """Exception types retried; empty: a failed attempt ends the task."""
    backoff_seconds: float = 1.0
    """The first retry's delay cap; doubles with every attempt."""
    backoff_max_seconds: float = 300.0

    def retryable(self, error: BaseException) -> bool:
        if isinstance(error, DoNotRetry | FlowCancelled):
            return False
        return isinstance(error, self.retry_on)

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds before the attempt after ``attempt``; ``draw`` is uniform in [0, 1)."""
        exponent = min(max(attempt - 1, 0), 62)  # 2**62 already exceeds any cap
        cap = min(self.backoff_max_seconds, self.backoff_seconds * 2.0**exponent)
        return max(0.0, cap * min(max(draw, 0.0), 1.0))


def after_failure(
    task: Task,
    policy: RetryPolicy,
    error: BaseException,
    message: str,
    now: datetime,
    draw: Callable[[], float] = random.random,
) -> TaskRequeued | None:
    """The requeue of a failed running attempt that may run again; None: it ends failed."""
    if task.state is not TaskState.running or task.cancel_requested:
        return None
    if task.attempt >= task.max_attempts or not policy.retryable(error):
        return None
    seconds = policy.delay(task.attempt, draw())
    not_before = now + timedelta(seconds=seconds)
    return event_for(
        task,
        TaskRequeued,
        at=now,
        reason=(
            f"attempt {task.attempt} of {task.max_attempts} failed ({message}); "
            f"retrying in {seconds:.1f}s at {not_before.isoformat(timespec='seconds')}"
        ),
        error=message,
        not_before=not_before,
    )
