"""Database workers when things die: a worker (SIGKILL), the database (stop, kill -9).

What must hold every time: no task is lost, none finishes twice (one
``task.done`` per task), and every process finds its way back by itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest

from flowyard.adapters.sql.wakeup import PgNotifyWaker, listen_uri
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.bus.inprocess import LocalWaker
from flowyard.core.errors import Unavailable
from flowyard.core.events import TaskCreated
from flowyard.core.ports import WorkerIdentity
from tests.integration.test_db_workers import (
    WORKER_READY,
    assert_no_crash,
    post_tasks,
    sleep_task,
    start_server,
    start_worker,
)
from tests.support.auth import ADMIN_AUTH
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessGroup, wait_all_finished, wait_until
from tests.support.task_db import create_tasks, open_store, read_log, task_states

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(180)]

SHORT_LEASE = {"FLOWYARD_LEASE_SECONDS": "2"}


async def wait_for_state(base_url: str, task_id: uuid.UUID, state: str, within: float) -> dict:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(auth=ADMIN_AUTH, base_url=base_url, timeout=5) as client:
        while True:
            task: dict = (await client.get(f"/api/tasks/{task_id}")).json()
            if task["state"] == state:
                return task
            if time.monotonic() >= deadline:
                raise AssertionError(f"task {task_id} not {state} after {within}s: {task}")
            await asyncio.sleep(0.05)


@pytest.mark.e2e
async def test_a_killed_workers_task_is_finished_by_another_after_its_lease(
    pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    files = tmp_path / "files"
    async with open_store(pg_uri) as store:
        server = start_server(flowyard_processes, pg_uri, tmp_path, SHORT_LEASE)
        workers = {
            name: start_worker(flowyard_processes, pg_uri, files, name, env=SHORT_LEASE)
            for name in ("first", "second")
        }
        server.wait_healthy(60)
        for worker in workers.values():
            worker.wait_for_log(WORKER_READY, 60)

        [task_id] = await post_tasks(server.url or "", [sleep_task(3.0)])
        running = await wait_for_state(server.url or "", task_id, "running", 10)
        victim_name = running["worker_id"].split("/", 1)[1]
        survivor_name = "second" if victim_name == "first" else "first"
        await asyncio.sleep(0.5)  # well into the flow, heartbeats under way
        workers[victim_name].kill()
        killed_at = time.monotonic()

        task = await wait_for_state(server.url or "", task_id, "succeeded", 30)
        print(f"finished {time.monotonic() - killed_at:.1f}s after the SIGKILL (lease 2s, flow 3s)")
        assert task["attempt"] == 2
        assert task["worker_id"].endswith("/" + survivor_name)

        log = await read_log(store)
        events = log.of(task_id)
        assert [e.type for e in events if e.type != "task.progress"] == [
            "task.created",
            "task.claimed",
            "task.requeued",
            "task.claimed",
            "task.done",
        ]
        claims = log.claims()
        assert [(c.worker_id.split("/", 1)[1], c.attempt) for c in claims] == [
            (victim_name, 1),
            (survivor_name, 2),
        ]
        assert_no_crash(flowyard_processes)


def stop_database(cluster: PostgresCluster, how: str) -> None:
    if how == "kill":
        cluster.kill()
    else:
        cluster.stop(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_postgres_restart_mid_run_loses_nothing_and_finishes_nothing_twice(
    how: str, pg_cluster_private: PostgresCluster, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    cluster = pg_cluster_private
    cluster.create_database("flowyard")
    uri = cluster.uri("flowyard")
    files = tmp_path / "files"
    env = {"FLOWYARD_LEASE_SECONDS": "3", "FLOWYARD_MAX_ATTEMPTS": "10"}
    async with open_store(uri) as store:
        server = start_server(flowyard_processes, uri, tmp_path, env)
        workers = [start_worker(flowyard_processes, uri, files, f"w{i}", env=env) for i in range(4)]
        server.wait_healthy(60)
        for worker in workers:
            worker.wait_for_log(WORKER_READY, 60)

        ids = await create_tasks(store, files, 240, params={"seconds": 0.1}, max_attempts=10)

        def progressed() -> bool:
            with psycopg.connect(uri, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM tasks WHERE state = 'succeeded'"
                ).fetchone()
            return row is not None and row[0] >= 30

        wait_until(progressed, 60, "30 tasks to finish", group=flowyard_processes)
        stop_database(cluster, how)
        down_at = time.monotonic()
        await asyncio.sleep(2.0)
        cluster.start()
        print(f"PostgreSQL {how}: down for {time.monotonic() - down_at:.1f}s")

        await asyncio.to_thread(wait_all_finished, server.url or "", 120, group=flowyard_processes)
        log = await read_log(store)
        assert log.count("task.done") == Counter(dict.fromkeys(ids, 1))
        assert await task_states(store) == Counter({"succeeded": 240})
        retried = sum(1 for c in log.claims() if c.attempt > 1)
        print(f"{retried} tasks ran a second time (their lease ran out during the outage)")

        assert all(w.alive() for w in workers), flowyard_processes.tails()
        felt = [w for w in workers if "retrying" in w.log_text() or "LISTEN" in w.log_text()]
        assert felt, "no worker noticed the outage"
        async with httpx.AsyncClient(
            auth=ADMIN_AUTH, base_url=server.url or "", timeout=10
        ) as client:
            assert (await client.get("/api/health")).status_code == 200
            listed = (await client.get("/api/workers")).json()["items"]
        assert sorted(w["name"] for w in listed if w["online"]) == ["w0", "w1", "w2", "w3"]
        [late] = await post_tasks(server.url or "", [sleep_task()])  # wake-ups work again
        await asyncio.to_thread(wait_all_finished, server.url or "", 30, group=flowyard_processes)
        assert (await store.get(late)).state.value == "succeeded"
        assert_no_crash(flowyard_processes)


async def test_database_outage_surfaces_as_unavailable_and_heals(
    pg_cluster_private: PostgresCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_private
    cluster.create_database("flowyard")
    uri = cluster.uri("flowyard")
    worker = WorkerIdentity(id="t/w", name="w", host="t", flows=("debug.sleep",))
    async with open_store(uri) as store:
        queue = SqlWorkQueue(store, LocalWaker(), lease_seconds=30)
        waker = PgNotifyWaker(listen_uri(store.db.engine), 10.0, reconnect_max=0.5)
        await waker.start()
        try:
            [task_id] = await create_tasks(store, tmp_path, 1)
            assert waker.listening

            cluster.stop(timeout=30)
            with pytest.raises(Unavailable):
                await store.get(task_id)
            with pytest.raises(Unavailable):
                await queue.claim(worker, 1)
            with pytest.raises(Unavailable):
                await store.record(TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep"))
            for _ in range(100):
                if not waker.listening:
                    break
                await asyncio.sleep(0.05)
            assert not waker.listening

            cluster.start()
            for _ in range(100):
                if waker.listening:
                    break
                await asyncio.sleep(0.1)
            assert waker.listening, "LISTEN did not reconnect"
            assert (await store.get(task_id)).state.value == "queued"
            [claimed] = await queue.claim(worker, 1)
            assert claimed.id == task_id

            waker.clear()
            started = time.monotonic()
            await create_tasks(store, tmp_path, 1)
            await waker.wait(5.0)
            assert time.monotonic() - started < 1.0, "NOTIFY did not wake after reconnecting"
        finally:
            await waker.close()
