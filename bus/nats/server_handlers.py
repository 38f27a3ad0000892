"""The server's request-reply handlers for NATS workers: heartbeats, presence, whoami.

They are FastStream subscribers (typed in, typed out, and in the AsyncAPI
document), answered by one server of the ``flowyard_server`` queue group.
Heartbeats and presence are refused under ids that are not NATS workers' ids,
so a NATS login cannot refresh or list a database worker's attempt; whoami is
served only when the server has a users table to answer from.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from flowyard.bus.nats.auth_config import WHOAMI_SUBJECTS, WhoAmIReply, whoami_login
from flowyard.bus.nats.subjects import PREFIX, subject_tokens, token
from flowyard.bus.nats.worker_protocol import (
    NATS_LEASES,
    LeaseReply,
    LeaseRequest,
    WorkerPresence,
)
from flowyard.core.errors import Unavailable
from flowyard.core.events import utcnow
from flowyard.core.ports import WorkerIdentity
from flowyard.core.redelivery import LeaseAnswer

log = logging.getLogger(__name__)


class Leases(Protocol):
    async def heartbeat(
        self, task_id: uuid.UUID, attempt: int, worker_id: str, owner: str, deadline: datetime
    ) -> LeaseAnswer: ...


RegisterWorker = Callable[[WorkerIdentity, datetime], Awaitable[None]]
WhoAmI = Callable[[str], Awaitable[WhoAmIReply]]
"""Whose tasks a NATS user (its subject token) may take, from the users table."""


def register_server_handlers(
    broker: NatsBroker,
    projection: Leases,
    register_worker: RegisterWorker,
    *,
    whoami: WhoAmI | None = None,
    queue: str = "flowyard_server",
) -> None:
    """Heartbeats, worker presence and whoami, answered by one server of the queue group."""

    @broker.subscriber(
        f"{PREFIX}.rpc.lease.*.*",
        queue=queue,
        title="lease",
        description="A NATS worker's heartbeat: refresh the lease, answer cancel / lost.",
    )
    async def on_lease(request: LeaseRequest, message: NatsMessage) -> LeaseReply:
        owner_token = subject_tokens(message.raw_message.subject)[3]
        if owner_token != token(request.owner) or not NATS_LEASES.is_worker(request.worker_id):
            return LeaseReply(lost=True, reason="heartbeat refused: owner or worker id mismatch")
        deadline = utcnow() + timedelta(seconds=request.lease_seconds)
        try:
            answer = await projection.heartbeat(
                request.task_id, request.attempt, request.worker_id, request.owner, deadline
            )
        except Unavailable as exc:
            log.warning("heartbeat of %s not recorded: %s", request.task_id, exc.message)
            return LeaseReply()
        return LeaseReply(
            lost=answer.lost, drop=answer.drop, cancel=answer.cancel, reason=answer.reason
        )

    @broker.subscriber(
        f"{PREFIX}.workers.*",
        queue=queue,
        title="workers",
        description="NATS worker presence, shown by GET /api/workers.",
    )
    async def on_worker(presence: WorkerPresence, message: NatsMessage) -> None:
        owner_token = subject_tokens(message.raw_message.subject)[2]
        expected = "_all" if presence.owner is None else token(presence.owner)
        if owner_token != expected or not NATS_LEASES.is_worker(presence.id):
            log.warning("ignored worker announcement of %s on %s", presence.id, owner_token)
            return
        identity = WorkerIdentity(
            id=presence.id,
            name=presence.name,
            host=presence.host,
            flows=presence.flows,
            concurrency=presence.concurrency,
            owner=presence.owner,
            transport=NATS_LEASES.transport,
            resources=presence.resources,
        )
        with contextlib.suppress(Unavailable):
            await register_worker(identity, utcnow())

    if whoami is None:
        return

    @broker.subscriber(
        WHOAMI_SUBJECTS,
        queue=queue,
        title="whoami",
        description=(
            "A worker asks whose tasks its NATS user may take; only that user may publish "
            "on its subject, so the subject says who asks."
        ),
    )
    async def on_whoami(body: bytes, message: NatsMessage) -> WhoAmIReply:
        login = whoami_login(message.raw_message.subject)
        if login is None:
            return WhoAmIReply(error="not a whoami subject")
        return await whoami(login)
