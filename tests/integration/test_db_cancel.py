"""A database worker on PostgreSQL stops a cancelled flow at once, not at its next heartbeat.

The lease here is 30 s, so heartbeats run every 10 s: a worker that learned of
cancels only from its heartbeat would take 5 s on average. ``NOTIFY
flowyard_cancel`` (sent in the transaction that records the request) wakes the
worker running the task, which stops the flow within one of its sleep slices.
"""

from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.test_db_workers import WORKER_READY, start_server, start_worker
from tests.support.auth import ADMIN_AUTH
from tests.support.processes import ProcessGroup
from tests.support.task_db import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]

LEASE = {"FLOWYARD_LEASE_SECONDS": "30"}
CANCELS = 5


def wait_state(client: httpx.Client, task_id: uuid.UUID, state: str, within: float) -> float:
    """Seconds until the task is in ``state``, polled every 10 ms."""
    started = time.monotonic()
    while True:
        body = client.get(f"/api/tasks/{task_id}").json()
        if body["state"] == state:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"task still {body['state']}: {body}"
        time.sleep(0.01)


def cancel_latencies(base_url: str, count: int) -> list[float]:
    """Start ``count`` long tasks one after another and cancel each once it runs."""
    latencies = []
    with httpx.Client(auth=ADMIN_AUTH, base_url=base_url, timeout=10) as client:
        for _ in range(count):
            body = {"flow": "debug.sleep", "params": {"seconds": 120, "steps": 1}}
            response = client.post("/api/tasks", json=body)
            assert response.status_code == 201, response.text
            task_id = uuid.UUID(response.json()["id"])
            wait_state(client, task_id, "running", 30)
            time.sleep(0.3)  # the flow is under way
            started = time.monotonic()
            assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
            wait_state(client, task_id, "cancelled", 20)
            latencies.append(time.monotonic() - started)
    return latencies


async def test_cancel_reaches_a_running_database_worker_within_a_second(
    pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    async with open_store(pg_uri):  # the schema, before the worker checks it
        pass
    server = start_server(flowyard_processes, pg_uri, tmp_path, LEASE)
    worker = start_worker(
        flowyard_processes, pg_uri, tmp_path / "files", "w", "--concurrency", "1", env=LEASE
    )
    server.wait_healthy(60)
    worker.wait_for_log(WORKER_READY, 60)
    latencies = cancel_latencies(server.url or "", CANCELS)
    print(f"cancel to cancelled: median {statistics.median(latencies) * 1000:.0f} ms, {latencies}")
    assert max(latencies) < 1.0, latencies
