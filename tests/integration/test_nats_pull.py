"""``Puller`` on a real JetStream consumer: an open request hands work over at once, and
a wait that is cancelled loses nothing it had taken."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from flowyard.bus.nats.pull import Puller
from tests.support.nats import NatsServer


@pytest.fixture
async def queue(nats_server: NatsServer) -> AsyncIterator[tuple[Client, str, Puller]]:
    """A stream and durable consumer of their own, and a puller on them."""
    name = f"PULL_{uuid.uuid4().hex[:8]}"
    subject = f"pulltest.{name}"
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[subject]))
    await js.add_consumer(
        name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    puller = Puller(client, name, "c")
    try:
        yield client, subject, puller
    finally:
        await puller.close()
        await js.delete_stream(name)
        await client.close()


async def pulled(puller: Puller, batch: int) -> list[Msg]:
    """Pull until something comes (a late delivery of an open request), for at most 2 s."""
    for _ in range(200):
        if got := await puller.pull(batch):
            return got
        await asyncio.sleep(0.01)
    return []


async def test_a_listening_puller_gets_work_the_moment_it_is_stored(
    queue: tuple[Client, str, Puller],
) -> None:
    client, subject, puller = queue
    listening = asyncio.create_task(puller.listen(4, 20.0))
    await asyncio.sleep(0.05)
    assert puller.outstanding() == 4
    started = asyncio.get_running_loop().time()
    await client.jetstream().publish(subject, b"work")
    assert await asyncio.wait_for(listening, 5) is True
    assert asyncio.get_running_loop().time() - started < 1.0  # not the request's 20 s
    assert puller.outstanding() == 3  # the rest of the request is still open, and counted
    (msg,) = await puller.pull(1)  # the delivered message, without asking again
    assert msg.data == b"work"
    assert msg.metadata.num_delivered == 1
    await msg.ack()


async def test_a_cancelled_listen_loses_no_message(queue: tuple[Client, str, Puller]) -> None:
    """Cancel the wait at every moment around a delivery: each message still comes out of
    the next pulls, on its first delivery (a dropped one would wait out its ack wait)."""
    client, subject, puller = queue
    js = client.jetstream()
    for i in range(40):
        listening = asyncio.create_task(puller.listen(1, 10.0))
        await asyncio.sleep(0.01)
        await js.publish(subject, str(i).encode())
        for _ in range(i % 4):  # cancel a few event-loop turns after the publish
            await asyncio.sleep(0)
        listening.cancel()  # or it returned already: a delivery seen
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        got = await pulled(puller, 1)
        assert [m.data for m in got] == [str(i).encode()]
        assert got[0].metadata.num_delivered == 1
        await got[0].ack()
