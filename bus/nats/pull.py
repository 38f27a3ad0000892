"""Exact pull requests on one durable JetStream consumer.

nats-py's ``fetch`` can leave a lingering pull request behind when it returns
(its second request outlives the call, and it waits out the timeout for a full
batch), and FastStream's pull subscriber over-fetches: messages then wait in a
client buffer while their ack wait runs, and come back as duplicate deliveries.
``Puller`` keeps at most one request outstanding per consumer and never asks
for more than the caller can take:

- ``pull(n)`` sends ``{"batch": n, "no_wait": true}``: the server answers at once
  with up to n messages, then a 404 status when it had fewer. Nothing lingers.
- ``pull(n, wait=s)`` sends ``{"batch": n, "expires": s}`` and returns as soon as
  the first message arrives (plus any already received). Only the server's own
  consumer uses it, and it calls ``pull`` again right away.

A message that arrives after its request was given up (a reconnect) is not
lost: the next ``pull`` returns it first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import NoReturn

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flowyard.bus.nats.broker import TRANSIENT, best_effort, nats_errors, unavailable
from flowyard.core.errors import Unavailable

API_PREFIX = "$JS.API"
TERMINAL = frozenset({"404", "408", "409"})
"""No messages, request expired, and the 409s (max ack pending, consumer deleted, …)."""
NO_RESPONDERS = "503"
HEARTBEAT = "100"


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
        self._active: str | None = None
        self._remaining = 0
        self._deadline = 0.0
        self.missing = False
        """The consumer (or stream) did not exist at the last pull."""

    async def pull(self, batch: int, *, wait: float = 0.0) -> list[Msg]:
        """Up to ``batch`` messages (more only if late ones were already delivered to us)."""
        if batch <= 0:
            return []
        sub = await self._subscription()
        got = self._take_queued(sub)
        if got:
            return got
        if not self._request_open():
            await self._request(min(batch, 10_000), wait)
        assert self._active is not None
        while self._request_open():
            try:
                msg = await sub.next_msg(timeout=max(0.001, self._deadline - time.monotonic()))
            except TimeoutError:
                self._active = None
                break
            except TRANSIENT as exc:  # the connection closed under us
                self._active = None
                raise unavailable(f"pull from {self.stream}/{self.consumer}", exc) from exc
            if self._status(msg):
                continue
            got.append(msg)
            got += self._take_queued(sub)
            if wait > 0 or len(got) >= batch:
                break
        return got

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

    async def _request(self, batch: int, wait: float) -> None:
        self._seq += 1
        reply = f"{self._inbox}.{self._seq}"
        body: dict[str, object] = {"batch": batch}
        if wait > 0:
            body["expires"] = int(wait * 1_000_000_000)
        else:
            body["no_wait"] = True
        with nats_errors(f"pull from {self.stream}/{self.consumer}"):
            await self.client.publish(self._subject, json.dumps(body).encode(), reply=reply)
        self._active = reply
        self._remaining = batch
        self._deadline = time.monotonic() + wait + self.reply_timeout

    def _request_open(self) -> bool:
        if self._active is None:
            return False
        if self._remaining <= 0 or time.monotonic() >= self._deadline:
            self._active = None
            return False
        return True

    def _status(self, msg: Msg) -> bool:
        """True for a status message (handled here); False for a real message."""
        status = msg.headers.get("Status") if msg.headers else None
        if not status:
            self._remaining -= 1
            self.missing = False
            return False
        if msg.subject == self._active and status != HEARTBEAT:
            self._active = None  # our request is over
            self.missing = status == NO_RESPONDERS
        return True  # a status of an older request is ignored

    def _take_queued(self, sub: Subscription) -> list[Msg]:
        """Real messages already delivered to our inbox (late deliveries included)."""
        taken: list[Msg] = []
        queue = sub._pending_queue  # nats-py keeps delivered messages here for next_msg
        while not queue.empty():
            msg = queue.get_nowait()
            sub._pending_size -= len(msg.data)
            queue.task_done()
            if not self._status(msg):
                taken.append(msg)
        return taken
