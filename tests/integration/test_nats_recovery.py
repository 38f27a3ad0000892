"""Recovery paths of the NATS server, driven by hand: the test plays the worker.

A real ``flowyard serve --mode server --nats`` process, nats-server and
PostgreSQL. The test takes work messages without claiming them (as workers do
whose claims cannot be published: FLOWYARD_EVENTS missing), so their
deliveries run out with the database still saying queued; the server must send
the work again, whether it heard the MaxDeliver advisory or not. And a NATS
worker whose presence announcement nobody heard is listed from its first claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from flowyard.bus.nats.streams import ADVISORY_STREAM, ATTEMPT_BASE, work_stream
from tests.integration.test_nats_events import claimed, done, publish, settle
from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    api,
    create,
    events_of,
    start_nats_server,
    start_nats_worker,
    task,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ManagedProcess, ProcessGroup

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(240)]

CONSUMER = "debug_sleep"


@pytest.fixture
async def nc(nats_server_private: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server_private.url)
    try:
        yield client
    finally:
        await client.close()


def serve(
    group: ProcessGroup, nats_url: str, pg_uri: str, tmp_path: Path, **env: str
) -> ManagedProcess:
    server = start_nats_server(
        group,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_url,
        lease_seconds=1,
        env={"FLOWYARD_MAX_ATTEMPTS": "2", **env},
    )
    server.wait_healthy(60)
    return server


async def bind(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    deadline = time.monotonic() + 10
    while True:  # the relay sets the work stream up with the first task
        try:
            await js.consumer_info(work_stream("admin"), CONSUMER)
            return await js.pull_subscribe_bind(CONSUMER, stream=work_stream("admin"))
        except nats.js.errors.NotFoundError:
            assert time.monotonic() < deadline, "the relay did not set up the work stream"
            await asyncio.sleep(0.05)


async def take(sub: JetStreamContext.PullSubscription, within: float) -> Msg:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(TimeoutError):
            (msg,) = await sub.fetch(1, timeout=0.5)
            return msg
        assert time.monotonic() < deadline, f"no work message within {within:.0f}s"


async def use_up_deliveries(sub: JetStreamContext.PullSubscription) -> None:
    """Take the work twice (MaxDeliver 2) and never claim or ack it."""
    for delivery in (1, 2):
        msg = await take(sub, 10)
        assert msg.metadata.num_delivered == delivery


async def finish_by_hand(
    server: ManagedProcess, nc: Client, sub: JetStreamContext.PullSubscription, within: float
) -> uuid.UUID:
    """The work comes back as a fresh message; claim it and succeed."""
    msg = await take(sub, within)
    assert msg.metadata.num_delivered == 1, "expected a new message, not a redelivery"
    assert msg.headers is not None
    assert msg.headers[ATTEMPT_BASE] == "0"
    task_id = uuid.UUID(task_id_of(msg))
    info = task(server, task_id)
    assert (info["state"], info["attempt"]) == ("queued", 0), info
    await publish(nc, claimed(info, 1))
    await publish(nc, done(info, 1))
    await msg.ack()
    return task_id


def task_id_of(msg: Msg) -> str:
    return str(json.loads(msg.data)["task_id"])


async def test_work_whose_deliveries_ran_out_unclaimed_is_sent_again_not_failed(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
    nc: Client,
) -> None:
    server = serve(flowyard_processes, nats_server_private.url, pg_uri, tmp_path)
    task_id = create(server, "debug.sleep", {"seconds": 0})
    sub = await bind(nc.jetstream())
    await use_up_deliveries(sub)
    # the advisory arrives; the database counted no attempt, so nothing is failed
    assert await finish_by_hand(server, nc, sub, within=40) == task_id
    final = wait_state(server, task_id, {"succeeded", "failed"}, 20)
    assert final["state"] == "succeeded", final
    assert [e["type"] for e in events_of(server, task_id)].count("task.done") == 1
    await sub.unsubscribe()


async def test_a_spent_message_whose_advisory_was_lost_is_found_and_replaced(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
    nc: Client,
) -> None:
    server = serve(flowyard_processes, nats_server_private.url, pg_uri, tmp_path)
    task_id = create(server, "debug.sleep", {"seconds": 0})
    js = nc.jetstream()
    sub = await bind(js)
    await settle(server, nc)
    server.terminate()
    await js.delete_stream(ADVISORY_STREAM)  # nobody stores the MaxDeliver advisory now
    await use_up_deliveries(sub)
    with contextlib.suppress(TimeoutError):
        await sub.fetch(1, timeout=2)  # JetStream notices MaxDeliver on the next pull
        raise AssertionError("delivered a third time despite MaxDeliver 2")
    server = serve(flowyard_processes, nats_server_private.url, pg_uri, tmp_path)
    # the reconciler sees a message the consumer has passed, with no claim recorded
    assert await finish_by_hand(server, nc, sub, within=120) == task_id
    assert wait_state(server, task_id, {"succeeded", "failed"}, 20)["state"] == "succeeded"
    await sub.unsubscribe()


async def test_a_worker_is_listed_from_its_first_claim(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
    nc: Client,
) -> None:
    server = serve(flowyard_processes, nats_server_private.url, pg_uri, tmp_path)
    task_id = create(server, "debug.sleep", {"seconds": 0})
    info = task(server, task_id)
    newcomer = "nats:test-host/newcomer"  # never announced itself
    await publish(nc, claimed(info, 1, newcomer), worker=newcomer)
    wait_state(server, task_id, {"running"}, 20)
    with api(server) as client:
        listed = {w["id"]: w for w in client.get("/api/workers").json()["items"]}
    assert newcomer in listed, listed
    row = listed[newcomer]
    assert (row["name"], row["host"], row["transport"]) == ("newcomer", "test-host", "nats")
    assert row["flows"] == ["debug.sleep"]
    assert row["online"] is True


async def test_a_worker_started_before_the_server_is_listed_once_it_ran_a_task(
    nats_server_private: NatsServer, pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    lease = 150.0  # presence every 50 s: the worker's first one went unheard, its next is late
    url = nats_server_private.url
    worker, _, _ = start_nats_worker(
        flowyard_processes, tmp_path, nats_url=url, name="early", lease_seconds=lease
    )
    wait_worker_ready(worker)
    started = time.monotonic()
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=url,
        lease_seconds=lease,
    )
    server.wait_healthy(60)
    task_id = create(server, "debug.sleep", {"seconds": 0})
    finished = wait_state(server, task_id, {"succeeded"}, 30, flowyard_processes)
    assert finished["worker_id"].endswith("/early")
    with api(server) as client:
        names = [w["name"] for w in client.get("/api/workers", auth=ADMIN_AUTH).json()["items"]]
    assert time.monotonic() - started < lease / 3, "too slow to tell: the worker announced again"
    assert "early" in names, server.log_tail()
