"""Prefetch under priority dispatch: ``nats_prefetch`` tasks per slot are sent ahead, no more.

With ``nats_prefetch: 0`` (the default) a worker slot has at most one task's work in
flight, so priority is exact; with N, the scheduler sends up to N more per slot
while the slot is busy, so the worker starts its next task from the stream
instead of waiting for the server's next round.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    create,
    health,
    start_nats_server,
    start_nats_worker,
    task,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(180)]


def test_prefetch_sends_n_per_busy_slot_ahead_and_no_more(
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
        env={"FLOWYARD_NATS_PREFETCH": "1"},
    )
    server.wait_healthy(60)
    worker, _, _ = start_nats_worker(
        flowyard_processes,
        tmp_path,
        nats_url=nats_server_private.url,
        name="lan-prefetch",
        extra=["--concurrency", "1"],
    )
    wait_worker_ready(worker)

    def sent() -> int:
        return int(health(server)["nats"]["dispatch"]["sent"])

    assert health(server)["nats"]["dispatch"] == {"mode": "priority", "prefetch": 1, "sent": 0}
    long = create(server, "debug.sleep", {"seconds": 10, "steps": 10})  # busy all along
    wait_state(server, long, {"running"}, 60, flowyard_processes)
    quick = [create(server, "debug.sleep", {"seconds": 0, "steps": 1}) for _ in range(3)]
    # one slot, busy: its task plus one sent ahead; the other two wait in the database
    wait_until(lambda: sent() >= 2, 3, "one task's work sent ahead", group=flowyard_processes)
    time.sleep(1.5)  # three scheduler rounds (poll interval 0.5 s): still no more
    assert sent() == 2
    assert task(server, long)["state"] == "running"
    assert [task(server, t)["state"] for t in quick] == ["queued"] * 3  # the slot is still busy
    for task_id in (long, *quick):
        assert wait_state(server, task_id, {"succeeded"}, 60, flowyard_processes)
    assert sent() == 4
