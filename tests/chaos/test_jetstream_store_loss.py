"""nats-server loses its whole store (stopped, store folder deleted, started empty) mid-run.

JetStream is not the system of record: every stream and consumer is gone, and so
are the work messages, the events not yet folded and the advisories. The server
must notice and re-create what it owns, and the reconciler must dispatch every
task the database still has queued, even ones whose re-sent work used up its
deliveries while the events stream was missing (their claims could not be
published). Real processes: server, NATS workers, nats-server, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    health,
    start_nats_server,
    start_nats_worker,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_all_finished, wait_until
from tests.support.task_db import create_tasks, open_store, read_log, task_states

pytestmark = [
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.chaos,
    pytest.mark.timeout(240),
]

TASKS = 300
LEASE = 2.0


def wipe_store(server: NatsServer, down_for: float = 1.0) -> None:
    """Stop nats-server, delete its store folder, start it empty on the same port."""
    server.stop()
    shutil.rmtree(server.store_dir)
    time.sleep(down_for)
    server.start()


async def test_store_loss_mid_run_every_task_still_finishes_once(
    nats_server_private: NatsServer, pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    url = nats_server_private.url
    files = tmp_path / "tasks"
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=files,
        nats_url=url,
        lease_seconds=LEASE,
        env={"FLOWYARD_MAX_ATTEMPTS": "3"},
    )
    server.wait_healthy(60)
    workers = [
        start_nats_worker(
            flowyard_processes,
            tmp_path,
            nats_url=url,
            name=f"w{i}",
            lease_seconds=LEASE,
            extra=["--flows", "debug.sleep", "--concurrency", "4"],
        )[0]
        for i in range(2)
    ]
    for worker in workers:
        wait_worker_ready(worker)
    async with open_store(pg_uri, migrate=False) as store:
        ids = await create_tasks(
            store, files, TASKS, params={"seconds": 0.1, "steps": 1}, max_attempts=3
        )

        async def succeeded() -> int:
            return (await task_states(store)).get("succeeded", 0)

        deadline = time.monotonic() + 60
        while await succeeded() < 30:
            assert time.monotonic() < deadline, flowyard_processes.tails()
            await asyncio.sleep(0.2)
        await asyncio.to_thread(wipe_store, nats_server_private)
        wiped_at = time.monotonic()

        await asyncio.to_thread(wait_all_finished, server.url or "", 150, group=flowyard_processes)
        drained = time.monotonic() - wiped_at
        log = await read_log(store)
        states = await task_states(store)
    print(f"drained {drained:.1f}s after the store was wiped")
    assert states == Counter({"succeeded": TASKS}), states
    assert log.count("task.done") == Counter(dict.fromkeys(ids, 1)), "a task ended twice"
    assert all(worker.alive() for worker in workers), flowyard_processes.tails()
    wait_until(
        lambda: health(server)["nats"]["connected"] is True,
        30,
        "the server to be connected to NATS",
        group=flowyard_processes,
    )
