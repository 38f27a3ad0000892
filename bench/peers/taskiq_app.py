"""The taskiq-nats app of ``bench/nats_queue.py``: one no-op task on a pull-based JetStream broker.

Loaded by ``taskiq worker taskiq_app:broker --app-dir bench/peers`` (the
workers) and by ``taskiq_peer.py`` (the kicker), configured from the
environment: ``BENCH_NATS_URL``, ``BENCH_TAG`` (names the stream, subject,
durable consumer and result bucket of one run), ``BENCH_FETCH`` (the pull
batch) and ``BENCH_RESULTS`` (``objectstore``: taskiq-nats's own
``NATSObjectStoreResultBackend``; ``none``: no result backend).

A job kicked with ``report=True`` (the idle one-at-a-time samples only)
publishes its start time, and after its result is saved its done time, on
``bench.report.<tag>``; the drained jobs do nothing at all.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
TAG = os.environ.get("BENCH_TAG", "bench")
FETCH = int(os.environ.get("BENCH_FETCH", "1"))
RESULTS = os.environ.get("BENCH_RESULTS", "objectstore")
REPORT = f"bench.report.{TAG}"

broker = PullBasedJetStreamBroker(
    URL,
    subject=f"bench.taskiq.{TAG}",
    stream_name=f"TASKIQ_{TAG}",
    durable=f"taskiq_{TAG}",
    pull_consume_batch=FETCH,
)
if RESULTS == "objectstore":
    broker = broker.with_result_backend(
        NATSObjectStoreResultBackend(URL, bucket_name=f"taskiq_results_{TAG}")
    )


async def publish_time(kind: str, sent: float) -> None:
    body = json.dumps({"kind": kind, "sent": sent, "at": time.time()}).encode()
    await broker.client.publish(REPORT, body)


class ReportDone(TaskiqMiddleware):
    """After the result is saved (the message is acked right after): the done time."""

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        if message.kwargs.get("report"):
            await publish_time("done", float(message.kwargs["sent"]))


broker.add_middlewares(ReportDone())


@broker.task(task_name="bench_noop")
async def noop(sent: float = 0.0, report: bool = False) -> None:
    if report:
        await publish_time("start", sent)
