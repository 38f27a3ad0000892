"""Webhook subscriptions and the delivery decisions, as pure functions.

What the dispatcher does after an attempt is decided here, without I/O:
``outcome`` classifies a response (2xx delivered, 410 Gone disables at once,
anything else retries), ``retry_delay`` is exponential backoff with full jitter,
``after_failure`` says whether to retry, give up or disable. The body a
subscriber receives is built once, when the delivery row is created, by
``delivery_body``: the event JSON, with download URLs for ``task.done`` outputs
(built by a function the caller passes: the domain knows no HTTP routes).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from flowyard.core.errors import InvalidInput
from flowyard.core.events import EVENT_TYPES, Event, FileRef, TaskDone

DEFAULT_EVENTS: tuple[str, ...] = ("task.done",)
RETRY_CAP_SECONDS = 3600.0
"""No retry waits longer than an hour, however many attempts failed."""


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class Outcome(StrEnum):
    delivered = "delivered"
    retry = "retry"
    gone = "gone"


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry, and when a failing subscription is disabled."""

    base: float = 1.0
    retry_for: timedelta = timedelta(hours=24)
    disable_after: int = 50
    cap: float = RETRY_CAP_SECONDS


@dataclass(frozen=True)
class Subscription:
    """One webhook subscription: where to send which events, and the signing secret."""

    id: uuid.UUID
    url: str
    events: tuple[str, ...]
    flows: tuple[str, ...] | None
    secret: str
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: datetime | None = None
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    owner: str | None = None
    """Who subscribed (None: an admin, before subscriptions had owners)."""
    all_owners: bool = True
    """An admin's subscription receives every owner's events; a user's only their own."""

    def wants(self, event: Event) -> bool:
        """Subscribed type, a flow the filter passes, and a task the subscriber may see."""
        if event.type not in self.events:
            return False
        if not self.all_owners and event.owner != self.owner:
            return False
        return self.flows is None or event.flow in self.flows


def check_event_types(types: Sequence[str] | None) -> tuple[str, ...]:
    """The subscribed types, deduplicated; an unknown one is named with the valid ones."""
    if not types:
        return DEFAULT_EVENTS
    for kind in types:
        if kind not in EVENT_TYPES:
            raise InvalidInput(
                f"events: unknown event type {kind!r}; valid types: {', '.join(EVENT_TYPES)}",
                field="events",
            )
    return tuple(dict.fromkeys(types))


def check_flows(flows: Sequence[str] | None) -> tuple[str, ...] | None:
    """None (every flow) or a non-empty tuple of flow names."""
    if flows is None:
        return None
    cleaned = tuple(dict.fromkeys(f.strip() for f in flows))
    if not cleaned or any(not f or len(f) > 200 for f in cleaned):
        raise InvalidInput(
            "flows: give flow names (1-200 characters each), or leave it out for every flow",
            field="flows",
        )
    return cleaned


def outcome(status_code: int) -> Outcome:
    """Standard Webhooks: any 2xx is success; 410 Gone means "stop sending"."""
    if 200 <= status_code < 300:
        return Outcome.delivered
    if status_code == 410:
        return Outcome.gone
    return Outcome.retry


def retry_delay(
    attempts: int,
    base: float,
    cap: float = RETRY_CAP_SECONDS,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempts-1))] after ``attempts`` failures.

    Full jitter spreads the retries of many deliveries that failed together (a
    receiver that was down) instead of sending them back as one burst.
    """
    ceiling = min(cap, base * 2 ** max(0, min(attempts - 1, 62)))
    return rand(0.0, ceiling)


def next_attempt_at(
    now: datetime,
    created_at: datetime,
    attempts: int,
    policy: RetryPolicy,
    rand: Callable[[float, float], float] = random.uniform,
) -> datetime | None:
    """When to try again after ``attempts`` failures, or None once the retry period is over.

    The last retry is moved up to the deadline rather than dropped, so a delivery
    is always tried once more at the end of its retry period.
    """
    deadline = created_at + policy.retry_for
    if now >= deadline:
        return None
    delay = retry_delay(attempts, policy.base, policy.cap, rand)
    return min(now + timedelta(seconds=delay), deadline)


def should_disable(
    consecutive_failures: int,
    failing_since: datetime | None,
    now: datetime,
    policy: RetryPolicy,
    *,
    gave_up: bool = False,
) -> bool:
    """Disable after ``disable_after`` failures in a row that span a whole retry period.

    A count alone would disable a healthy receiver that was down for a minute while
    many tasks finished; the time span alone would disable one that failed twice a
    day. A delivery that just ran out of retries (``gave_up``) is proof enough of the
    span: it was retried for a whole period without one success in between.
    """
    if consecutive_failures < policy.disable_after or failing_since is None:
        return False
    return gave_up or now - failing_since >= policy.retry_for


OutputUrl = Callable[[uuid.UUID, str], str]
"""Where the server serves output ``name`` of a task; the services side owns the routes."""


def delivery_body(event: Event, output_url: OutputUrl | None = None) -> str:
    """The JSON a subscriber receives: the event, with download URLs for a result's outputs.

    Without ``output_url`` the outputs are listed without URLs.
    """
    data: dict[str, Any] = event.model_dump(mode="json")
    if isinstance(event, TaskDone):
        data["outputs"] = [_output(event.task_id, ref, output_url) for ref in event.outputs]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _output(task_id: uuid.UUID, ref: FileRef, output_url: OutputUrl | None) -> dict[str, Any]:
    listed: dict[str, Any] = {"name": ref.name, "size": ref.size, "media_type": ref.media_type}
    if output_url is not None:
        listed["url"] = output_url(task_id, ref.name)
    return listed


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one subscription."""

    id: int
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    task_id: uuid.UUID
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did to its delivery and subscription (for logs and tests)."""

    status: DeliveryStatus
    disabled_reason: str | None = None
