"""Prometheus metrics and the one log line per task transition.

Two sources, chosen so that a scrape never scans the task table:

- **Events** (counters and histograms): every event this server sees passes
  through ``TaskObserver.observe`` once — in default mode after each commit, in
  server mode from the event-log tailer, which sees what every worker wrote.
  Counters start at zero when the process starts, as Prometheus expects.
- **A snapshot** (gauges) taken at most every ``SNAPSHOT_SECONDS`` when
  ``/metrics`` is read: queued and running tasks by flow (one ``GROUP BY`` over
  the unfinished rows only, through the ``(state, flow, …)`` index, capped at
  ``DEPTH_CAP`` rows), workers online (the small ``workers`` table), the NATS
  outbox's bounded lag query, live subscribers and webhook sends in flight.

Workers have their own registry (``WorkerMetrics`` in ``worker_metrics.py``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowyard.core.events import (
    Event,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
    utcnow,
)

if TYPE_CHECKING:
    from flowyard.services.runtime import Runtime

log = logging.getLogger("flowyard.tasks")

disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: half the output, and nobody graphs them

SNAPSHOT_SECONDS = 5.0
"""Gauges are refreshed at most this often, however often Prometheus scrapes."""
DEPTH_CAP = 100_000
"""Unfinished rows counted per scrape at most; a deeper queue shows this number."""
REMEMBERED = 50_000
"""Tasks (and event ids) remembered to compute durations and drop repeated events."""

# from a no-op task on a laptop to an hour of GPU work
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def seconds_between(start: datetime | None, end: datetime) -> float | None:
    """Non-negative seconds (clocks of two machines may disagree), or None without a start."""
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


class _Bounded(OrderedDict[uuid.UUID, Any]):
    """The most recent ``REMEMBERED`` entries; older ones are forgotten first."""

    def remember(self, key: uuid.UUID, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class TaskObserver:
    """Counts and times task transitions from events, and logs one line per transition."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.created = Counter(
            "flowyard_tasks_created", "Tasks accepted, by flow", ["flow"], registry=registry
        )
        self.finished = Counter(
            "flowyard_tasks_finished",
            "Tasks that reached a final state, by flow and status",
            ["flow", "status"],
            registry=registry,
        )
        self.requeued = Counter(
            "flowyard_tasks_requeued",
            "Attempts given back to the queue (lost lease, worker stopped)",
            ["flow"],
            registry=registry,
        )
        self.progress = Counter(
            "flowyard_task_progress_events",
            "task.progress events, by flow",
            ["flow"],
            registry=registry,
        )
        self.claim_latency = Histogram(
            "flowyard_task_claim_latency_seconds",
            "From task.created to the first task.claimed of the task",
            ["flow"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.run_duration = Histogram(
            "flowyard_task_run_duration_seconds",
            "From task.claimed to task.done of the same attempt, by final status",
            ["flow", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._seen = _Bounded()
        self._created_at = _Bounded()
        self._claimed_at = _Bounded()

    def observe(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.id in self._seen:  # the tailer may hand an event over twice
                continue
            self._seen.remember(event.id, True)
            try:
                self._observe(event)
            except Exception:  # metrics must never break the path that commits events
                log.exception("cannot observe %s %s", event.type, event.id)

    def _observe(self, event: Event) -> None:
        flow = event.flow
        duration: float | None = None
        worker: str | None = None
        if isinstance(event, TaskProgress):
            self.progress.labels(flow).inc()
            return  # progress is not a transition: no log line
        if isinstance(event, TaskCreated):
            self.created.labels(flow).inc()
            self._created_at.remember(event.task_id, event.at)
        elif isinstance(event, TaskClaimed):
            worker = event.worker_id
            duration = seconds_between(self._created_at.pop(event.task_id, None), event.at)
            if duration is not None:
                self.claim_latency.labels(flow).observe(duration)
            self._claimed_at.remember(event.task_id, event.at)
        elif isinstance(event, TaskDone):
            worker = event.worker_id
            self.finished.labels(flow, event.status).inc()
            self._created_at.pop(event.task_id, None)
            duration = seconds_between(self._claimed_at.pop(event.task_id, None), event.at)
            if duration is not None:
                self.run_duration.labels(flow, event.status).observe(duration)
        elif isinstance(event, TaskRequeued):
            self.requeued.labels(flow).inc()
            duration = seconds_between(self._claimed_at.pop(event.task_id, None), event.at)
        log_transition(event, worker=worker, duration=duration)


def log_transition(event: Event, *, worker: str | None, duration: float | None) -> None:
    """``task claimed <id> flow=… owner=… attempt=… worker=… duration=…``, or its JSON."""
    fields: dict[str, Any] = {
        "event": event.type,
        "task_id": str(event.task_id),
        "flow": event.flow,
        "owner": event.owner,
        "attempt": event.attempt,
    }
    if worker is not None:
        fields["worker"] = worker
    if duration is not None:
        fields["duration_s"] = round(duration, 3)
    if isinstance(event, TaskDone):
        fields["status"] = event.status
        if event.error:
            fields["error"] = event.error[:200]
    elif isinstance(event, TaskRequeued):
        fields["reason"] = event.reason[:200]
    kind = event.type.removeprefix("task.")
    log.info("task %s %s", kind, event.task_id, extra={"fields": fields})


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "flowyard_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry (an answer asking for a "
            "retry, or no answer), gone (410: the subscription is disabled)",
            ["outcome"],
            registry=registry,
        )

    def attempt(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()


class Snapshot:
    """Gauge values, refreshed by ``ServerMetrics.refresh`` before a scrape is rendered."""

    def __init__(self) -> None:
        self.taken = 0.0
        self.depth: list[tuple[str, str, int]] = []
        self.workers: dict[str, int] = {}
        self.outbox_pending: int | None = None
        self.outbox_lag: float | None = None
        self.subscribers = 0
        self.webhooks_in_flight = 0


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        depth = GaugeMetricFamily(
            "flowyard_tasks",
            f"Unfinished tasks by state and flow (at most {DEPTH_CAP} counted)",
            labels=["state", "flow"],
        )
        for state, flow, count in s.depth:
            depth.add_metric([state, flow], count)
        yield depth
        workers = GaugeMetricFamily(
            "flowyard_workers_online",
            "Workers seen within worker_offline_seconds, by transport",
            labels=["transport"],
        )
        for transport, count in sorted(s.workers.items()):
            workers.add_metric([transport], count)
        yield workers
        if s.outbox_pending is not None:
            yield GaugeMetricFamily(
                "flowyard_outbox_pending",
                "Events not yet relayed to NATS (at most 10000 counted)",
                value=s.outbox_pending,
            )
            yield GaugeMetricFamily(
                "flowyard_outbox_lag_seconds",
                "Age of the oldest event waiting for the NATS relay (0: none waiting)",
                value=s.outbox_lag or 0.0,
            )
        yield GaugeMetricFamily(
            "flowyard_live_subscribers", "Open live event streams", value=s.subscribers
        )
        yield GaugeMetricFamily(
            "flowyard_webhook_sends_in_flight",
            "Webhook requests being sent now",
            value=s.webhooks_in_flight,
        )


class ServerMetrics:
    """The server's registry: event counters, webhook outcomes and the snapshot gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = TaskObserver(self.registry)
        self.webhooks = WebhookMetrics(self.registry)
        self.snapshot = Snapshot()
        self.registry.register(_SnapshotCollector(self.snapshot))

    async def refresh(self, rt: Runtime, *, force: bool = False) -> None:
        """Take the gauges' values unless they are younger than ``SNAPSHOT_SECONDS``."""
        now = time.monotonic()
        if not force and now - self.snapshot.taken < SNAPSHOT_SECONDS:
            return
        from flowyard.adapters.sql.stats import queue_depth  # the SQL stays in adapters

        s = self.snapshot
        s.depth = await queue_depth(rt.db, DEPTH_CAP)
        cutoff = utcnow() - timedelta(seconds=rt.settings.worker_offline_seconds)
        online: dict[str, int] = {}
        for row in await rt.store.workers():
            if row["last_seen_at"] >= cutoff:  # type: ignore[operator]
                transport = str(row.get("transport") or "db")
                online[transport] = online.get(transport, 0) + 1
        s.workers = online
        if rt.nats is not None:
            lag = await rt.nats.outbox.lag()
            s.outbox_pending, s.outbox_lag = lag.pending, lag.oldest_seconds
        s.subscribers = rt.hub.subscriber_count
        s.webhooks_in_flight = rt.dispatcher.in_flight
        s.taken = now

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
