"""Webhooks as a subscriber of the event stream: deliveries made from NATS, sent apart.

With NATS the server records no delivery rows inside its writes: a durable
consumer of FLOWYARD_EVENTS makes them from the events the database holds. With
``webhook_dispatch=separate`` the server sends nothing; ``flowyard webhooks
dispatch`` processes (two here, sharing the consumer and the SKIP LOCKED claims)
make and send every delivery, once, even those of tasks that finished before the
dispatchers started (the server made the consumer when it connected).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from flowyard.adapters.webhook_sender import verify
from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    create,
    start_nats_server,
    start_nats_worker,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, flowyard_command, wait_until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(180)]

ENV = {
    "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE": "true",
    "FLOWYARD_WEBHOOK_BACKOFF_BASE": "0.2",
    "FLOWYARD_POLL_INTERVAL": "0.5",
}


def test_separate_dispatchers_deliver_every_task_done_once(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    separate = {**ENV, "FLOWYARD_WEBHOOK_DISPATCH": "separate"}
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server_private.url,
        env=separate,
    )
    server.wait_healthy(60)
    receiver = WebhookReceiver().start()
    try:
        with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
            made = api.post("/api/webhooks", json={"url": receiver.url, "events": ["task.done"]})
            assert made.status_code == 201, made.text
            sub = made.json()
            worker, _, _ = start_nats_worker(
                flowyard_processes, tmp_path, nats_url=nats_server_private.url, name="lan-hooks"
            )
            wait_worker_ready(worker)
            task_ids = [create(server, "debug.sleep", {"seconds": 0}) for _ in range(6)]
            done_ids: set[str] = set()
            for task_id in task_ids:
                wait_state(server, task_id, {"succeeded"}, 60, flowyard_processes)
                events = api.get(f"/api/tasks/{task_id}/events").json()["items"]
                done_ids |= {e["id"] for e in events if e["type"] == "task.done"}
            time.sleep(1.0)
            assert receiver.received == []  # the server sends nothing itself
            command = [*flowyard_command(), "webhooks", "dispatch", "--db", pg_uri]
            for n in range(2):
                dispatcher = flowyard_processes.start(
                    f"dispatcher-{n}", [*command, "--nats", nats_server_private.url], separate
                )
                dispatcher.wait_for_log(r"webhook dispatcher on ", 60)
            got = receiver.wait_for(
                lambda r: done_ids <= {x.webhook_id for x in r}, 30, "six task.done deliveries"
            )
            time.sleep(0.5)  # a second copy of any of them would arrive by now
            got = receiver.received
            assert sorted(r.webhook_id for r in got) == sorted(done_ids)  # each exactly once
            assert all(verify(sub["secret"], r.headers, r.body) for r in got)
            assert {uuid.UUID(r.json()["task_id"]) for r in got} == set(task_ids)
            wait_until(
                lambda: (
                    {
                        d["status"]
                        for d in api.get(f"/api/webhooks/{sub['id']}/deliveries").json()["items"]
                    }
                    == {"delivered"}
                ),
                10,
                "the deliveries to be recorded",
            )
    finally:
        receiver.stop()


def test_the_server_makes_and_sends_deliveries_from_the_stream_by_default(
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
        env=ENV,
    )
    server.wait_healthy(60)
    receiver = WebhookReceiver().start()
    try:
        with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
            kinds = ["task.created", "task.claimed", "task.done"]
            made = api.post("/api/webhooks", json={"url": receiver.url, "events": kinds})
            assert made.status_code == 201, made.text
            worker, _, _ = start_nats_worker(
                flowyard_processes, tmp_path, nats_url=nats_server_private.url, name="lan-own"
            )
            wait_worker_ready(worker)
            task_id = create(server, "debug.sleep", {"seconds": 0})
            wait_state(server, task_id, {"succeeded"}, 60, flowyard_processes)
            events = api.get(f"/api/tasks/{task_id}/events").json()["items"]
            # every event the record holds, the worker's included (read back from the log)
            expected = {e["id"] for e in events if e["type"] in kinds}
            got = receiver.wait_for(
                lambda r: expected <= {x.webhook_id for x in r}, 30, "every event of the task"
            )
            assert {r.webhook_id for r in got} == expected
    finally:
        receiver.stop()
