"""NATS workers under faults: a worker killed mid-task, nats-server down mid-run.

Real processes only (server, workers, nats-server, PostgreSQL); short leases
(FLOWYARD_LEASE_SECONDS=2) so redelivery happens within the test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    create,
    events_of,
    health,
    start_nats_server,
    start_nats_worker,
    task,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_all_finished, wait_until
from tests.support.task_db import create_tasks, open_store, read_log, task_states

pytestmark = [
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.chaos,
    pytest.mark.timeout(180),
]

LEASE = 2.0


def test_worker_killed_mid_task_is_redelivered_and_finished_by_another(
    nats_server_private: NatsServer, pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    url = nats_server_private.url
    server = start_nats_server(
        flowyard_processes, db_uri=pg_uri, files=tmp_path / "tasks", nats_url=url
    )
    server.wait_healthy(60)
    doomed, _, _ = start_nats_worker(
        flowyard_processes, tmp_path, nats_url=url, name="doomed", extra=["--flows", "debug.sleep"]
    )
    wait_worker_ready(doomed)
    task_id = create(server, "debug.sleep", {"seconds": 12, "steps": 120})
    wait_until(
        lambda: task(server, task_id)["progress"] > 0.01,
        20,
        "the first worker to make progress",
        group=flowyard_processes,
    )
    assert task(server, task_id)["worker_id"].endswith("/doomed")
    # the rescuer idles until the task comes back: JetStream, not the server's
    # reconciler (three leases without a heartbeat), hands it over
    rescuer, _, _ = start_nats_worker(
        flowyard_processes, tmp_path, nats_url=url, name="rescuer", extra=["--flows", "debug.sleep"]
    )
    wait_worker_ready(rescuer)
    assert task(server, task_id)["state"] == "running"
    doomed.kill()  # SIGKILL: no release, no ack; JetStream redelivers after the ack wait

    finished = wait_state(server, task_id, {"succeeded", "failed"}, 60, flowyard_processes)
    assert finished["state"] == "succeeded", finished
    assert finished["attempt"] == 2
    assert finished["worker_id"].endswith("/rescuer")
    log = events_of(server, task_id)
    assert [e["type"] for e in log].count("task.done") == 1
    requeued = [e for e in log if e["type"] == "task.requeued"]
    assert len(requeued) == 1
    assert "redelivered by NATS" in requeued[0]["reason"]
    claims = [
        (e["attempt"], e["worker_id"].rsplit("/", 1)[-1])
        for e in log
        if e["type"] == "task.claimed"
    ]
    assert claims == [(1, "doomed"), (2, "rescuer")]


async def test_nats_outage_mid_run_loses_nothing_and_everything_reconnects(
    nats_server_private: NatsServer, pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    url = nats_server_private.url
    files = tmp_path / "tasks"
    server = start_nats_server(flowyard_processes, db_uri=pg_uri, files=files, nats_url=url)
    server.wait_healthy(60)
    workers = [
        start_nats_worker(
            flowyard_processes,
            tmp_path,
            nats_url=url,
            name=f"lan-{i}",
            extra=["--flows", "debug.sleep", "--concurrency", "4"],
        )[0]
        for i in range(2)
    ]
    for worker in workers:
        wait_worker_ready(worker)
    async with open_store(pg_uri, migrate=False) as store:
        await create_tasks(store, files, 300, params={"seconds": 0.05, "steps": 2})
        wait_until(
            lambda: (task_states_sync(server) or 0) >= 30,
            60,
            "some tasks to finish before the outage",
            group=flowyard_processes,
        )
        nats_server_private.stop()  # the whole bus is gone for a while
        await create_tasks(store, files, 100, params={"seconds": 0.0, "steps": 1})
        await asyncio.sleep(4)
        assert health(server)["nats"]["connected"] is False
        assert health(server)["nats"]["relay"]["pending"] > 0  # waiting in the outbox
        nats_server_private.start()  # same port, same store
        wait_all_finished(server.url or "", 120, group=flowyard_processes)
        wait_until(
            lambda: health(server)["nats"]["relay"]["pending"] == 0,
            30,
            "the outbox to drain",
            group=flowyard_processes,
        )
        log = await read_log(store)
        states = await task_states(store)
    assert states == {"succeeded": 400}, states
    done = log.count("task.done")
    assert len(done) == 400
    assert set(done.values()) == {1}, "a task ended more than once"
    assert all(worker.alive() for worker in workers)
    assert health(server)["nats"]["connected"] is True


def task_states_sync(server: object) -> int:
    """Tasks finished so far, over HTTP (the store's loop is busy in the test)."""
    import httpx

    url = getattr(server, "url", "")
    with httpx.Client(auth=ADMIN_AUTH, base_url=url, timeout=5) as client:
        response = client.get("/api/tasks", params={"state": "succeeded", "limit": 500})
        return len(response.json()["items"])
