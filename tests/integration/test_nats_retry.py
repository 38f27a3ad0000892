"""Retry over NATS: the relay sends a retried task's work, and leftover work cannot run it twice.

A retry in server mode skips ``max_attempts + 1`` attempt numbers, so every
claim a leftover work message of an earlier attempt can still make is stale:
the projection refuses it, and a MaxDeliver advisory of such a message ends
nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flowyard.adapters.sql.projection import SqlProjection
from flowyard.core.events import TaskClaimed, TaskCreated, TaskDone
from flowyard.core.task import TaskState, lease_expired, retry_event
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    api,
    create,
    events_of,
    health,
    start_nats_server,
    start_nats_worker,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_until
from tests.support.task_db import open_store

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(180)]


def steps(server: object, task_id: uuid.UUID) -> list[tuple[str, int]]:
    return [
        (e["type"], e["attempt"])
        for e in events_of(server, task_id)  # type: ignore[arg-type]
        if e["type"] in ("task.claimed", "task.retried", "task.done")
    ]


def test_a_retried_task_runs_once_though_its_old_work_message_is_still_there(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server_private.url,
    )
    server.wait_healthy(60)

    def relayed(count: int) -> bool:
        return int(health(server)["nats"]["relay"]["relayed"]) >= count

    # no worker yet: the work message of attempt 0 stays in the stream
    task_id = create(server, "debug.sleep", {"seconds": 0.5, "steps": 2})
    wait_until(lambda: relayed(1), 30, "the task's work to be sent", group=flowyard_processes)
    with api(server) as client:
        assert client.post(f"/api/tasks/{task_id}/cancel").json()["state"] == "cancelled"
        retried = client.post(f"/api/tasks/{task_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["attempt"] == 4  # 0 + (max_attempts 3 + 1) skipped
    wait_until(lambda: relayed(3), 30, "the retry's work to be sent", group=flowyard_processes)

    worker, _, _ = start_nats_worker(
        flowyard_processes, tmp_path, nats_url=nats_server_private.url, name="lan-retry"
    )
    wait_worker_ready(worker)
    done = wait_state(server, task_id, {"succeeded", "failed"}, 60, flowyard_processes)
    assert (done["state"], done["attempt"]) == ("succeeded", 5), done
    assert done["worker_id"].startswith("nats:")
    assert steps(server, task_id) == [
        ("task.done", 0),
        ("task.retried", 0),
        ("task.claimed", 5),
        ("task.done", 5),
    ]


async def test_max_deliveries_of_a_leftover_message_end_nothing(pg_uri: str) -> None:
    async with open_store(pg_uri) as store:
        created = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", max_attempts=3)
        task = await store.record(created)
        task = await store.record(
            TaskDone(task_id=task.id, flow=task.flow, attempt=0, status="cancelled")
        )
        task = await store.record(retry_event(task, attempts=3, skip=4))
        projection = SqlProjection(store.db)
        # the old message (base 0) hit MaxDeliver after 3 deliveries: attempts 1..3
        assert await projection.fail_undelivered(task.id, 3, "no worker finished it") is None
        assert (await store.get(task.id)).state is TaskState.queued
        # the retry's own message (base 4) hitting MaxDeliver on its last attempt does end it
        for attempt in (5, 6, 7):
            task = await store.record(
                TaskClaimed(
                    task_id=task.id,
                    flow=task.flow,
                    attempt=attempt,
                    worker_id="nats:w",
                    lease_expires_at=created.at,
                )
            )
            if attempt < 7:
                task = await store.record(lease_expired(task, created.at))
        ended = await projection.fail_undelivered(task.id, 7, "no worker finished it")
        assert ended is not None
        assert (await store.get(task.id)).state is TaskState.failed
