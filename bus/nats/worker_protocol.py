"""What NATS workers and the server say to each other besides events, and who a NATS worker is.

A NATS worker's id is ``nats:<host>/<name>``: the prefix keeps it apart from the
ids of database workers, and the server refuses heartbeats and presence under
any other id. JetStream keeps these workers' leases (the ack wait), so the task
table records ``nats`` as the keeper of the attempts they run (``NATS_LEASES``)
and the database's lease expiry leaves them alone.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from flowyard.core.redelivery import KeptLeases

NATS_LEASES = KeptLeases(
    transport="nats",
    worker_prefix="nats:",
    redelivered="redelivered by NATS after the ack wait",
)


class LeaseRequest(BaseModel):
    """A NATS worker's heartbeat, asked of the server on ``flowyard.rpc.lease.<owner>.<flow>``."""

    task_id: uuid.UUID
    flow: str
    owner: str
    attempt: int
    worker_id: str
    lease_seconds: float


class LeaseReply(BaseModel):
    lost: bool = False
    drop: bool = False
    cancel: bool = False
    reason: str = ""


class WorkerPresence(BaseModel):
    """Sent on ``flowyard.workers.<owner>`` at start and every heartbeat period."""

    id: str
    name: str
    host: str
    flows: tuple[str, ...]
    concurrency: int
    owner: str | None = None
    transport: str = NATS_LEASES.transport
    resources: dict[str, str | int | None] = Field(default_factory=dict)
