"""Catching a task's projection up with a worker event that is ahead of it (pure).

Some transports keep their workers' leases themselves (JetStream's ack wait): the
attempt number of a claim is then the transport's delivery count, and the server
learns of attempts only from the events workers publish. Two things can leave the
projection behind a worker event:

- a worker died and the transport handed its work to another worker after the
  lease ran out: the claim for attempt n+1 arrives while the projection still
  runs attempt n;
- a delivery was never reported (its worker died between receiving the work and
  publishing ``task.claimed``), or a result reached the server before its claim.

``catch_up`` returns the events the server records first, so that
``core.task.apply`` accepts the worker's event and ``core.task.rebuild`` still
reproduces the row from the log alone. Only claims and results are caught up: a
progress report or a release that is ahead of the projection is refused as usual,
because a worker publishes (and awaits) its claim before anything else. The words
of those events (a worker id, a requeue reason) come from the transport, as a
``KeptLeases``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from flowyard.core.events import Event, TaskClaimed, TaskDone
from flowyard.core.task import Task, TaskState, apply, event_for, lease_expired


@dataclass(frozen=True)
class KeptLeases:
    """A transport that keeps its workers' leases: what the server says for it.

    ``transport`` is its workers' ``WorkerIdentity.transport`` and what the task
    table records as the keeper of the attempts they run, so that the database's
    own lease expiry leaves those attempts alone.
    """

    transport: str = "transport"
    worker_prefix: str = "transport:"
    """Its workers' ids start with this (``<prefix><host>/<name>``)."""
    redelivered: str = "redelivered by the transport after the lease ran out"
    """Why an attempt was requeued when the transport gave its work to another worker."""

    @property
    def unreported_worker(self) -> str:
        """Stands in for the worker of a delivery whose ``task.claimed`` never reached us."""
        return f"{self.worker_prefix}unreported"

    def worker_id(self, local_id: str) -> str:
        return f"{self.worker_prefix}{local_id}"

    def is_worker(self, worker_id: str | None) -> bool:
        """True for ids this transport's workers use (it refuses others' ids)."""
        return bool(worker_id) and str(worker_id).startswith(self.worker_prefix)

    def host_and_name(self, worker_id: str) -> tuple[str, str]:
        """What a worker id says of its worker: ``(host, name)`` (name empty if not given)."""
        host, _, name = worker_id.removeprefix(self.worker_prefix).partition("/")
        return host, name


Status = Literal["recorded", "duplicate", "unchanged", "refused"]


@dataclass(frozen=True)
class WorkerEvent:
    """An event as a worker published it; ``worker_id`` comes from its message, not its body."""

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
    """The server's answer to the heartbeat of a worker whose lease the transport keeps."""

    lost: bool = False
    """The attempt is no longer the worker's: stop the flow, drop the result."""
    drop: bool = False
    """Also drop the work: it is a leftover (task finished, or a duplicate delivery)."""
    cancel: bool = False
    reason: str = ""


def catch_up(task: Task, event: Event, now: datetime, kept: KeptLeases) -> list[Event]:
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
            step = lease_expired(current, now, reason=kept.redelivered)
        else:  # queued
            due = current.attempt + 1
            if due > target or (due == target and isinstance(event, TaskClaimed)):
                break
            # a result names its worker: the missing claim of its own attempt was that worker's
            reporter = event.worker_id if isinstance(event, TaskDone) and due == target else None
            step = event_for(
                current,
                TaskClaimed,
                attempt=due,
                at=now,
                worker_id=reporter or kept.unreported_worker,
                lease_expires_at=now,
            )
        steps.append(step)
        current = apply(current, step)
    return steps
