"""The server's side of worker events, driven by hand: a test plays the NATS worker.

A real ``flowyard serve --mode server --nats`` process, a real nats-server and
PostgreSQL; the test publishes worker events on FLOWYARD_EVENTS exactly as a
worker would (subject, ``Nats-Msg-Id``, ``Flowyard-Worker``), duplicates,
replays and reorders them, and reads the task and its event log back over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from flowyard.bus.nats.streams import EVENTS_STREAM, MSG_ID, WORKER, work_stream
from flowyard.bus.nats.subjects import subject_for
from flowyard.core.events import (
    Event,
    TaskClaimed,
    TaskDone,
    TaskProgress,
    utcnow,
)
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    create,
    events_of,
    health,
    start_nats_server,
    task,
    wait_state,
)
from tests.support.processes import ManagedProcess, ProcessGroup

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]

WORKER_ID = "nats:test/hand"


@pytest.fixture
async def nc(nats_server_private: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server_private.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def server(
    nats_server_private: NatsServer, pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> ManagedProcess:
    process = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server_private.url,
        lease_seconds=30,
    )
    process.wait_healthy(60)
    return process


async def publish(nc: Client, event: Event, worker: str = WORKER_ID) -> None:
    ack = await nc.jetstream().publish(
        subject_for(event),
        event.to_json().encode(),
        headers={MSG_ID: str(event.id), WORKER: worker},
        stream=EVENTS_STREAM,
    )
    assert ack.stream == EVENTS_STREAM


def claimed(info: dict[str, Any], attempt: int, worker: str = WORKER_ID) -> TaskClaimed:
    return TaskClaimed(
        task_id=uuid.UUID(info["id"]),
        flow=info["flow"],
        owner=info["owner"],
        attempt=attempt,
        worker_id=worker,
        lease_expires_at=utcnow() + timedelta(seconds=30),
    )


def done(
    info: dict[str, Any], attempt: int, status: str = "succeeded", worker: str = WORKER_ID
) -> TaskDone:
    return TaskDone(
        task_id=uuid.UUID(info["id"]),
        flow=info["flow"],
        owner=info["owner"],
        attempt=attempt,
        status=status,  # type: ignore[arg-type]
        worker_id=worker,
    )


def progress(info: dict[str, Any], attempt: int, value: float) -> TaskProgress:
    return TaskProgress(
        task_id=uuid.UUID(info["id"]),
        flow=info["flow"],
        owner=info["owner"],
        attempt=attempt,
        progress=value,
    )


async def settle(server: ManagedProcess, nc: Client) -> None:
    """Until the server's consumer has taken every event published so far."""
    deadline = time.monotonic() + 20
    js = nc.jetstream()
    while time.monotonic() < deadline:
        info = await js.consumer_info(EVENTS_STREAM, "flowyard_server")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server did not consume its events\n{server.log_tail()}")


def kinds(server: ManagedProcess, task_id: uuid.UUID) -> list[str]:
    return [e["type"] for e in events_of(server, task_id)]


async def test_duplicated_and_replayed_done_change_nothing(
    server: ManagedProcess, nc: Client
) -> None:
    task_id = create(server, "debug.sleep", {"seconds": 0})
    info = task(server, task_id)
    first = done(info, 1)
    await publish(nc, claimed(info, 1))
    await publish(nc, first)
    wait_state(server, task_id, {"succeeded"}, 20)
    before = task(server, task_id)

    # the same event again (a redelivery: same id), then a replay under a new id,
    # then a different verdict for the same attempt, and a late claim for a new one
    await nc.publish(subject_for(first), first.to_json().encode(), headers={WORKER: WORKER_ID})
    await publish(nc, first.model_copy(update={"id": uuid.uuid4()}))
    await publish(nc, done(info, 1, "failed"))
    await publish(nc, claimed(info, 2))
    await settle(server, nc)

    after = task(server, task_id)
    assert after["state"] == "succeeded"
    assert after["finished_at"] == before["finished_at"]
    assert after["attempt"] == 1
    assert kinds(server, task_id).count("task.done") == 1


async def test_events_out_of_order_never_move_a_task_backwards(
    server: ManagedProcess, nc: Client
) -> None:
    task_id = create(server, "debug.sleep", {"seconds": 0})
    info = task(server, task_id)
    # the result overtakes its claim: the server records a stand-in claim first
    await publish(nc, done(info, 1))
    wait_state(server, task_id, {"succeeded"}, 20)
    await publish(nc, claimed(info, 1))
    await publish(nc, progress(info, 1, 0.5))
    await settle(server, nc)
    final = task(server, task_id)
    assert final["state"] == "succeeded"
    assert final["progress"] == 1.0
    log = kinds(server, task_id)
    assert log == ["task.created", "task.claimed", "task.done"], log

    # an older attempt's events after a newer claim are refused (fencing)
    second_id = create(server, "debug.sleep", {"seconds": 0})
    second = task(server, second_id)
    await publish(nc, claimed(second, 1, "nats:test/old"))
    await publish(nc, claimed(second, 2))  # JetStream redelivered: attempt 1's worker died
    await publish(nc, progress(second, 1, 0.9), worker="nats:test/old")
    await publish(nc, done(second, 1, "failed", "nats:test/old"), worker="nats:test/old")
    await settle(server, nc)
    running = task(server, second_id)
    assert running["state"] == "running"
    assert running["attempt"] == 2
    assert running["worker_id"] == WORKER_ID
    assert running["progress"] == 0.0
    requeued = [e for e in events_of(server, second_id) if e["type"] == "task.requeued"]
    assert [r["attempt"] for r in requeued] == [1]
    assert "redelivered by NATS" in requeued[0]["reason"]
    # a result from a worker that does not hold the attempt is refused too
    impostor = "nats:test/impostor"
    await publish(nc, done(second, 2, worker=impostor), worker=impostor)
    await settle(server, nc)
    assert task(server, second_id)["state"] == "running"
    await publish(nc, done(second, 2))
    assert wait_state(server, second_id, {"succeeded"}, 20)["attempt"] == 2


async def test_forged_owner_is_refused(server: ManagedProcess, nc: Client) -> None:
    task_id = create(server, "debug.sleep", {"seconds": 0}, owner="alice")
    info = task(server, task_id)
    forged = claimed({**info, "owner": "mallory"}, 1)
    await publish(nc, forged)  # subject says mallory, the task is alice's
    await settle(server, nc)
    assert task(server, task_id)["state"] == "queued"
    body = json.loads(claimed(info, 1).to_json())  # right body, wrong subject
    await nc.jetstream().publish(
        "flowyard.events.claimed.mallory.debug_sleep",
        json.dumps(body).encode(),
        headers={MSG_ID: str(uuid.uuid4()), WORKER: WORKER_ID},
    )
    await settle(server, nc)
    assert task(server, task_id)["state"] == "queued"
    assert health(server)["nats"]["worker_events"]["refused"] >= 2


async def test_work_message_that_hits_max_deliveries_fails_the_task(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
    nc: Client,
) -> None:
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server_private.url,
        lease_seconds=1,
        env={"FLOWYARD_MAX_ATTEMPTS": "2"},
    )
    server.wait_healthy(60)
    task_id = create(server, "debug.sleep", {"seconds": 0})
    js = nc.jetstream()
    deadline = time.monotonic() + 10
    while True:  # the relay sets the work stream up with the first task
        try:
            await js.consumer_info(work_stream("admin"), "debug_sleep")
            break
        except nats.js.errors.NotFoundError:
            assert time.monotonic() < deadline, "the relay did not set up the work stream"
            await asyncio.sleep(0.05)
    sub = await js.pull_subscribe_bind("debug_sleep", stream=work_stream("admin"))
    # a worker takes the task twice and dies each time (never acks, never beats)
    for attempt in (1, 2):
        deadline = time.monotonic() + 10
        while True:
            try:
                (msg,) = await sub.fetch(1, timeout=1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the work was not (re)delivered"
        assert msg.metadata.num_delivered == attempt
        await publish(nc, claimed(task(server, task_id), attempt, f"nats:test/dies-{attempt}"))
    # JetStream notices MaxDeliver when it would deliver again: keep asking, as workers do
    deadline = time.monotonic() + 20
    while task(server, task_id)["state"] != "failed":
        assert time.monotonic() < deadline, server.log_tail()
        with contextlib.suppress(TimeoutError):
            await sub.fetch(1, timeout=0.5)
            raise AssertionError("delivered a third time despite MaxDeliver 2")
    failed = task(server, task_id)
    assert "no worker finished it in 2 attempts" in failed["error"]
    info = await js.stream_info(work_stream("admin"))
    assert info.state.messages == 0  # JetStream keeps max-delivered messages; the server removed it
    await sub.unsubscribe()
    config = (await js.consumer_info(work_stream("admin"), "debug_sleep")).config
    assert config.ack_policy == AckPolicy.EXPLICIT
    assert isinstance(config, ConsumerConfig)
