"""A worker's own Prometheus metrics, served on ``--metrics-port``.

``metered`` wraps the worker's work queue so claims and results are counted
on their way through: the worker code itself knows nothing of metrics.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowyard.core.errors import ConfigError, LeaseLost
from flowyard.core.events import TaskDone, TaskProgress, TaskRequeued, utcnow
from flowyard.core.ports import Heartbeat, Refill, Reported, WorkerIdentity, WorkQueue
from flowyard.core.task import Task
from flowyard.services.metrics import DURATION_BUCKETS, seconds_between


class WorkerMetrics:
    """A worker's own registry, served on its metrics port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.claimed = Counter(
            "flowyard_worker_claims", "Tasks this worker claimed", ["flow"], registry=self.registry
        )
        self.finished = Counter(
            "flowyard_worker_tasks_finished",
            "Results this worker reported, by flow and status",
            ["flow", "status"],
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "flowyard_worker_claim_latency_seconds",
            "From the task's creation to this worker's claim",
            ["flow"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "flowyard_worker_run_duration_seconds",
            "From this worker's claim to its result, by status",
            ["flow", "status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.running: dict[uuid.UUID, datetime] = {}
        self.registry.register(_RunningCollector(self.running))

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` from a daemon thread (prometheus-client's own server)."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"setting metrics_port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        logging.getLogger(__name__).info("worker metrics on http://%s:%d/metrics", host, port)

    def on_claimed(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            self.claimed.labels(task.flow).inc()
            claimed_at = task.claimed_at or utcnow()
            latency = seconds_between(task.created_at, claimed_at)
            if latency is not None:
                self.claim_latency.labels(task.flow).observe(latency)
            self.running[task.id] = claimed_at

    def on_done(self, event: TaskDone) -> None:
        self.finished.labels(event.flow, event.status).inc()
        duration = seconds_between(self.running.pop(event.task_id, None), event.at)
        if duration is not None:
            self.run_duration.labels(event.flow, event.status).observe(duration)

    def on_released(self, task: Task) -> None:
        self.running.pop(task.id, None)


class _RunningCollector(Collector):
    def __init__(self, running: dict[uuid.UUID, datetime]) -> None:
        self.running = running

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "flowyard_worker_running", "Tasks this worker holds now", value=len(self.running)
        )


class MeteredWorkQueue:
    """A ``WorkQueue`` that tells ``WorkerMetrics`` about claims and results, then delegates."""

    def __init__(self, queue: WorkQueue, metrics: WorkerMetrics) -> None:
        self.inner = queue
        self.metrics = metrics

    async def register(self, worker: WorkerIdentity) -> None:
        await self.inner.register(worker)

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        tasks = await self.inner.claim(worker, limit)
        self.metrics.on_claimed(tasks)
        return tasks

    async def wait_for_work(self, max_wait: float) -> None:
        await self.inner.wait_for_work(max_wait)

    async def heartbeat(
        self, worker: WorkerIdentity, tasks: Sequence[Task]
    ) -> list[Heartbeat | LeaseLost]:
        return await self.inner.heartbeat(worker, tasks)

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        await self.inner.report(worker, event)
        if isinstance(event, TaskDone):
            self.metrics.on_done(event)

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        reported = await self.inner.report_many(worker, events, refill)
        for event, refused in zip(events, reported.refused, strict=True):
            if refused is None and isinstance(event, TaskDone):
                self.metrics.on_done(event)
        self.metrics.on_claimed(reported.claimed)
        return reported

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        await self.inner.release(worker, task, reason)
        self.metrics.on_released(task)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        """Anything else a transport offers (maintenance hooks, extra methods) passes through."""
        return getattr(self.inner, name)


def metered(
    queue: WorkQueue, port: int | None, host: str
) -> tuple[WorkQueue, Callable[[], None] | None]:
    """``queue`` wrapped, and how to serve its metrics, when ``port`` is set; else ``queue``."""
    if port is None:
        return queue, None
    metrics = WorkerMetrics()
    return MeteredWorkQueue(queue, metrics), lambda: metrics.serve(port, host)
