"""Exact pull requests on one durable JetStream consumer.

nats-py's ``fetch`` can leave a lingering pull request behind when it returns
(its second request outlives the call, and it waits out the timeout for a full
batch), and FastStream's pull subscriber over-fetches: messages then wait in a
client buffer while their ack wait runs, and come back as duplicate deliveries.
``Puller`` counts what its open requests may still deliver (``outstanding``) and
never asks for more than the caller says it can take:

- ``pull(n)`` sends ``{"batch": n, "no_wait": true}``: the server answers at once
  with up to n messages, then a 404 status when it had fewer. Nothing lingers.
- ``listen(n, s)`` leaves ``{"batch": n, "expires": s}`` open (unless a request is
  open already) and returns as soon as a message is delivered;
  the message waits, counted, for the next ``pull``. An idle worker listens so
  that new work reaches it the moment JetStream stores it, without a wake-up and
  a pull of its own; its request may outlive the wait, which is why the worker
  counts ``outstanding`` against its free slots.
- ``pull(n, wait=s)`` listens, then returns what was delivered: the server's own
  consumers call it in a loop.

A message that arrives after its request was given up (a reconnect) is not
lost: the next ``pull`` returns it first. Messages are put down to the oldest
open request, as JetStream serves waiting requests in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError

from flowyard.bus.nats.broker import best_effort, nats_errors, unavailable
from flowyard.core.errors import Unavailable

API_PREFIX = "$JS.API"
TERMINAL = frozenset({"404", "408", "409"})
"""No messages, request expired, and the 409s (max ack pending, consumer deleted, …)."""
NO_RESPONDERS = "503"
HEARTBEAT = "100"


@dataclass
class _Request:
    remaining: int
    deadline: float


class Puller:
    def __init__(self, client: Client, stream: str, consumer: str, *, reply_timeout: float = 2.0):
        self.client = client
        self.stream = stream
        self.consumer = consumer
        self.reply_timeout = reply_timeout
        self._subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = client.new_inbox()
        self._sub: Subscription | None = None
        self._seq = 0
        self._open: dict[str, _Request] = {}  # by reply subject, oldest first
        self._delivered: list[Msg] = []  # came while listening, not yet pulled
        self.missing = False
        """The consumer (or stream) did not exist at the last pull."""

    def outstanding(self) -> int:
        """How many more messages the open requests may still deliver."""
        now = time.monotonic()
        for reply in [
            r for r, req in self._open.items() if req.remaining <= 0 or now >= req.deadline
        ]:
            del self._open[reply]
        return sum(req.remaining for req in self._open.values())

    @property
    def delivered(self) -> bool:
        """A message is here, waiting for the next ``pull``."""
        return bool(self._delivered) or (
            self._sub is not None and not self._sub._pending_queue.empty()
        )

    def take_delivered(self) -> list[Msg]:
        """The messages already delivered to us, without asking for more."""
        return self._take_queued(self._sub) if self._sub is not None else []

    async def pull(self, batch: int, *, wait: float = 0.0) -> list[Msg]:
        """What was delivered already, topped up to ``batch`` by a request answered at once
        (more than ``batch`` only if the open requests delivered more meanwhile)."""
        if batch <= 0:
            return []
        sub = await self._subscription()
        if wait > 0:
            await self.listen(batch, wait)
            return self._take_queued(sub)
        got = self._take_queued(sub)
        if len(got) >= batch:
            return got
        reply = await self._request(batch - len(got), 0.0)
        while reply in self._open:
            msg = await self._next(sub, self._open[reply].deadline - time.monotonic())
            if msg is None:
                self._open.pop(reply, None)
                break
            if self._status(msg):
                continue
            got.append(msg)
            got += self._take_queued(sub)
            if len(got) >= batch:
                break
        return got

    async def listen(self, batch: int, seconds: float) -> bool:
        """Ask for up to ``batch`` messages, the request left open for ``seconds`` (unless one
        is open already); True once one was delivered (it waits for ``pull``), False when the
        time is up first. Safe to cancel: a message taken meanwhile is kept."""
        sub = await self._subscription()
        if self.delivered:
            return True
        if batch > 0 and not self.outstanding():
            await self._request(batch, seconds)
        deadline = time.monotonic() + seconds
        while (msg := await self._next(sub, deadline - time.monotonic())) is not None:
            if not self._status(msg):
                self._delivered.append(msg)
                return True
            if not self.outstanding():
                return False  # our request ended (expired, or the consumer is gone)
        return False

    async def _next(self, sub: Subscription, within: float) -> Msg | None:
        """The next message to our inbox, or None after ``within`` seconds.

        Not nats-py's ``next_msg``: cancelled just as its inner task took a message, it
        drops the message, which then waits out its ack wait. Cancelled here, a message
        already taken is kept for the next ``pull``."""
        getter = asyncio.ensure_future(sub._pending_queue.get())
        try:
            await asyncio.wait({getter}, timeout=max(0.001, within))
        except asyncio.CancelledError:
            if not getter.done():
                getter.cancel()  # asyncio.Queue.get leaves the item queued when cancelled
            elif not self._status(msg := self._received(sub, getter.result())):
                self._delivered.append(msg)
            raise
        if not getter.done():
            getter.cancel()
            if self.client.is_closed:
                what = f"pull from {self.stream}/{self.consumer}"
                raise unavailable(what, ConnectionClosedError())
            return None
        return self._received(sub, getter.result())

    @staticmethod
    def _received(sub: Subscription, msg: Msg) -> Msg:
        sub._pending_size -= len(msg.data)  # nats-py's own bookkeeping, as next_msg does
        sub._pending_queue.task_done()
        return msg

    def gone(self, on_missing: Callable[[], None] | None = None) -> NoReturn:
        """The consumer is gone (JetStream lost it): have it set up again; back off meanwhile."""
        if on_missing is not None:
            on_missing()
        raise Unavailable(f"NATS: consumer {self.consumer} on {self.stream} is missing")

    async def close(self) -> None:
        if self._sub is not None:
            with best_effort():
                await self._sub.unsubscribe()
            self._sub = None

    async def _subscription(self) -> Subscription:
        if self._sub is None:
            with nats_errors(f"subscribe for {self.stream}/{self.consumer}"):
                self._sub = await self.client.subscribe(f"{self._inbox}.*")
        return self._sub

    async def _request(self, batch: int, wait: float) -> str:
        batch = min(batch, 10_000)
        self._seq += 1
        reply = f"{self._inbox}.{self._seq}"
        body: dict[str, object] = {"batch": batch}
        if wait > 0:
            body["expires"] = int(wait * 1_000_000_000)
        else:
            body["no_wait"] = True
        with nats_errors(f"pull from {self.stream}/{self.consumer}"):
            await self.client.publish(self._subject, json.dumps(body).encode(), reply=reply)
        self._open[reply] = _Request(batch, time.monotonic() + wait + self.reply_timeout)
        return reply

    def _status(self, msg: Msg) -> bool:
        """True for a status message (handled here); False for a real message."""
        status = msg.headers.get("Status") if msg.headers else None
        if not status:
            oldest = next(iter(self._open.values()), None)
            if oldest is not None:
                oldest.remaining -= 1
                if oldest.remaining <= 0:
                    self._open.pop(next(iter(self._open)))
            self.missing = False
            return False
        if msg.subject in self._open and status != HEARTBEAT:
            del self._open[msg.subject]  # that request is over
            self.missing = status == NO_RESPONDERS
        return True  # a status of an older request is ignored

    def _take_queued(self, sub: Subscription) -> list[Msg]:
        """Real messages already delivered to us (late deliveries included)."""
        taken, self._delivered = self._delivered, []
        queue = sub._pending_queue  # nats-py keeps delivered messages here for next_msg
        while not queue.empty():
            msg = self._received(sub, queue.get_nowait())
            if not self._status(msg):
                taken.append(msg)
        return taken
