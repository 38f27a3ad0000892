"""Catching a task's projection up with a worker event that is ahead of it (pure).

Over NATS the attempt number of a claim is the work message's delivery count, and
the server learns of attempts only from the events workers publish. Two things can
leave the projection behind a worker event:

- a worker died and JetStream redelivered the work after the ack wait: the claim
  for attempt n+1 arrives while the projection still runs attempt n;
- a delivery was never reported (its worker died between fetching the message and
  publishing ``task.claimed``), or a result reached the server before its claim.

``catch_up`` returns the events the server records first, so that
``core.task.apply`` accepts the worker's event and ``core.task.rebuild`` still
reproduces the row from the log alone. Only claims and results are caught up: a
progress report or a release that is ahead of the projection is refused as usual,
because a worker publishes (and awaits) its claim before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from flowyard.core.events import Event, TaskClaimed, TaskDone
from flowyard.core.task import Task, TaskState, apply, lease_expired

NATS_WORKER_PREFIX = "nats:"
"""Worker ids of NATS workers start with this: their leases live in JetStream, not SQL."""

UNREPORTED_WORKER = f"{NATS_WORKER_PREFIX}unreported"
"""Stands in for the worker of a delivery whose ``task.claimed`` never reached the server."""

REDELIVERED = "redelivered by NATS after the ack wait"

Status = Literal["recorded", "duplicate", "unchanged", "refused"]


@dataclass(frozen=True)
class WorkerEvent:
    """An event as a NATS worker published it; ``worker_id`` comes from its message header."""

    event: Event
    worker_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What the projection did with a worker event."""

    event: Event
    status: Status
    reason: str = ""
    task: Task | None = None


@dataclass(frozen=True)
class LeaseAnswer:
    """The server's answer to a NATS worker's heartbeat."""

    lost: bool = False
    """The attempt is no longer the worker's: stop the flow, drop the result."""
    drop: bool = False
    """Also ack the work message: it is a leftover (task finished, or a duplicate message)."""
    cancel: bool = False
    reason: str = ""


def catch_up(task: Task, event: Event, now: datetime) -> list[Event]:
    """Events that bring ``task`` to where ``event`` can apply; empty when none are needed."""
    if not isinstance(event, TaskClaimed | TaskDone):
        return []
    target = event.attempt
    steps: list[Event] = []
    current = task
    for _ in range(target + 1):  # each step moves the attempt on or ends the loop
        if current.state.finished or current.attempt > target:
            break
        step: Event
        if current.state is TaskState.running:
            if current.attempt == target:
                break
            step = lease_expired(current, now, reason=REDELIVERED)
        else:  # queued
            due = current.attempt + 1
            if due > target or (due == target and isinstance(event, TaskClaimed)):
                break
            # a result names its worker: the missing claim of its own attempt was that worker's
            reporter = event.worker_id if isinstance(event, TaskDone) and due == target else None
            step = TaskClaimed(
                task_id=current.id,
                flow=current.flow,
                owner=current.owner,
                attempt=due,
                at=now,
                worker_id=reporter or UNREPORTED_WORKER,
                lease_expires_at=now,
            )
        steps.append(step)
        current = apply(current, step)
    return steps


def is_nats_worker(worker_id: str | None) -> bool:
    return bool(worker_id) and str(worker_id).startswith(NATS_WORKER_PREFIX)
