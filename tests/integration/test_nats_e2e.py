"""LAN workers over NATS, end to end: a real nats-server, PostgreSQL, and flowyard processes.

The workers here run with no database URI in their environment, an empty
working directory and their own TMPDIR: whatever they do, they do over NATS.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    api,
    bulk_create,
    create,
    events_of,
    left_behind,
    start_nats_server,
    start_nats_worker,
    task,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_all_finished, wait_until
from tests.support.task_db import open_store, read_log, task_states

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(180)]


def _png(width: int = 64, height: int = 48) -> bytes:
    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(height):
            image.putpixel((x, y), ((x * 4) % 256, (y * 5) % 256, 128))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_image_task_runs_on_a_worker_that_sees_only_nats(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    files = tmp_path / "tasks"
    server = start_nats_server(
        flowyard_processes, db_uri=pg_uri, files=files, nats_url=nats_server_private.url
    )
    server.wait_healthy(60)
    worker, cwd, tmp = start_nats_worker(
        flowyard_processes,
        tmp_path,
        nats_url=nats_server_private.url,
        name="lan-1",
        extra=["--flows", "image.blur,debug.sleep"],
    )
    wait_worker_ready(worker)

    with api(server) as client:
        response = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": '{"radius": 2}'},
            files={"inputs": ("photo.png", _png(), "image/png")},
        )
        assert response.status_code == 201, response.text
        task_id = uuid.UUID(response.json()["id"])
    done = wait_state(server, task_id, {"succeeded", "failed"}, 60, flowyard_processes)
    assert done["state"] == "succeeded", done
    assert done["worker_id"].startswith("nats:")

    with api(server) as client:
        response = client.get(f"/api/tasks/{task_id}/outputs/output.png")
    assert response.status_code == 200
    result = Image.open(io.BytesIO(response.content))
    assert result.size == (64, 48)
    # the worker left nothing behind: no files in its cwd, its temp folder emptied
    deadline = time.monotonic() + 5
    while left_behind(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left_behind(tmp) == []
    assert left_behind(cwd) == []
    kinds = [e["type"] for e in events_of(server, task_id)]
    assert kinds[0] == "task.created"
    assert kinds.count("task.claimed") == 1
    assert kinds.count("task.done") == 1
    assert worker.alive()


async def test_four_workers_drain_two_thousand_tasks_each_ending_once(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    files = tmp_path / "tasks"
    server = start_nats_server(
        flowyard_processes, db_uri=pg_uri, files=files, nats_url=nats_server_private.url
    )
    server.wait_healthy(60)
    workers = [
        start_nats_worker(
            flowyard_processes,
            tmp_path,
            nats_url=nats_server_private.url,
            name=f"drain-{i}",
            extra=["--flows", "debug.sleep", "--concurrency", "4"],
        )[0]
        for i in range(4)
    ]
    for worker in workers:
        wait_worker_ready(worker)
    async with open_store(pg_uri, migrate=False) as store:
        started = time.monotonic()
        ids = await bulk_create(store, 2000)
        wait_all_finished(server.url or "", 120, group=flowyard_processes)
        elapsed = time.monotonic() - started
        log = await read_log(store)
        states = await task_states(store)
    assert states == {"succeeded": 2000}, states
    done = log.count("task.done")
    assert set(done) == set(ids)
    assert set(done.values()) == {1}, "a task ended more than once"
    claimed_by = {e.worker_id.split("/")[-1] for e in log.claims()}
    assert len(claimed_by) >= 2, claimed_by  # the work was shared
    print(f"2000 tasks in {elapsed:.1f}s ({2000 / elapsed:.0f}/s)")


def test_long_flow_outlives_the_ack_wait_without_redelivery_and_cancel_reaches_it(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    url = nats_server_private.url
    server = start_nats_server(
        flowyard_processes, db_uri=pg_uri, files=tmp_path / "tasks", nats_url=url, lease_seconds=3
    )
    server.wait_healthy(60)
    worker, _, _ = start_nats_worker(
        flowyard_processes,
        tmp_path,
        nats_url=url,
        name="steady",
        lease_seconds=3,
        extra=["--flows", "debug.sleep", "--concurrency", "2"],
    )
    wait_worker_ready(worker)
    long_id = create(server, "debug.sleep", {"seconds": 8, "steps": 8})  # 2.7 ack waits
    doomed_id = create(server, "debug.sleep", {"seconds": 120, "steps": 120})
    wait_until(
        lambda: task(server, doomed_id)["state"] == "running",
        20,
        "the task to be cancelled to start",
        group=flowyard_processes,
    )
    asked = time.monotonic()
    with api(server) as client:
        assert client.post(f"/api/tasks/{doomed_id}/cancel").status_code == 200
    cancelled = wait_state(server, doomed_id, {"cancelled"}, 15, flowyard_processes)
    assert cancelled["error"] == "cancelled on request"
    assert time.monotonic() - asked < 5

    finished = wait_state(server, long_id, {"succeeded", "failed"}, 60, flowyard_processes)
    assert finished["state"] == "succeeded", finished
    assert finished["attempt"] == 1
    log = [e["type"] for e in events_of(server, long_id)]
    assert log.count("task.claimed") == 1
    assert "task.requeued" not in log
    assert log.count("task.done") == 1
