"""Tables of the SQL store, portable across SQLite, PostgreSQL and MariaDB.

The ``tasks`` table is a projection of the append-only ``events`` log. Both
change in one transaction, so they never disagree. Migrations in
``migrations/versions`` create exactly these tables; keep the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes everywhere; microseconds kept on MariaDB (``DATETIME(6)``)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if dialect.name in ("mysql", "mariadb", "sqlite"):
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Name = sa.String(200)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("flow", Name, nullable=False),
    sa.Column("owner", Name, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("worker_id", Name, nullable=True),
    sa.Column("lease_expires_at", UtcDateTime, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.String(500), nullable=False, default=""),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("claimed_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("cancelled_at", UtcDateTime, nullable=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # queued but not claimable before (run_at, a retry's backoff); NULL: at once (0005)
    sa.Column("not_before", UtcDateTime, nullable=True),
    # a cancel because the client left (cancel_on_disconnect): when, and what it was doing (0006)
    sa.Column("interrupted_at", UtcDateTime, nullable=True),
    sa.Column("interrupted_stage", sa.String(500), nullable=True),
    # seconds an attempt may run (NULL: the flow's timeout_seconds, if any) (0008)
    sa.Column("timeout_seconds", sa.Float, nullable=True),
    # chains (0009): the task whose success created this one, and follow-ups still to create
    sa.Column("parent_id", sa.Uuid, nullable=True),
    sa.Column("then", sa.JSON(none_as_null=True), nullable=True),
    # NATS priority dispatch (0010): a work message for the task is out since then; not a
    # projection of events (NULL again when a retry or a backoff needs a new message)
    sa.Column("work_sent_at", UtcDateTime, nullable=True),
    # the transport that keeps a running attempt's lease (0011: "nats", JetStream's ack wait);
    # NULL: the database's own lease, which SqlWorkQueue.reap expires. Written by the
    # projection of transport workers' events, not a projection of the events themselves
    sa.Column("lease_keeper", sa.String(40), nullable=True),
    sa.Index("ix_tasks_claim", "state", "flow", "priority", "created_at"),
    sa.Index("ix_tasks_lease", "state", "lease_expires_at"),
    sa.Index("ix_tasks_created", "created_at"),
    sa.Index("ix_tasks_parent", "parent_id"),
)

# The claim's order (0012): a claim stops after the rows it takes instead of sorting all.
# On PostgreSQL this index and ix_tasks_lease hold only queued and running tasks (0015),
# and migrations 0013-0014 add partial indexes for the NATS scheduler: migrations, not
# this metadata, make the schema.
sa.Index("ix_tasks_next", tasks.c.state, tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)

# A create's Idempotency-Key, unique per owner (0007): the task it made, and a digest of
# the request, so the same key with other parameters is told apart (409). Kept for
# idempotency_window_hours, then pruned (a key may be used again after that).
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("owner", Name, primary_key=True),
    sa.Column("key", Name, primary_key=True),
    sa.Column("task_id", sa.Uuid, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_idempotency_keys_created", "created_at"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Uuid, nullable=False, unique=True),
    sa.Column("task_id", sa.Uuid, nullable=False, index=True),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("flow", Name, nullable=False),
    sa.Column("owner", Name, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # transactional outbox: NULL until the relay has published the event to NATS
    sa.Column("relayed_at", UtcDateTime, nullable=True),
    sa.Index("ix_events_relay", "relayed_at", "seq"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", Name, primary_key=True),
    sa.Column("name", Name, nullable=False),
    sa.Column("host", Name, nullable=False),
    sa.Column("flows", sa.JSON, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("owner", Name, nullable=True),
    sa.Column("transport", sa.String(40), nullable=False),
    # device, device and host memory the worker reported (NULL: a worker from before 0004)
    sa.Column("resources", sa.JSON, nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
)

# Webhooks. No foreign keys on purpose: a delivery row is inserted inside the
# transaction of the event it carries, and a subscription deleted a moment ago
# (another process's cached list) must not make that event's write fail.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("flows", sa.JSON, nullable=True),
    sa.Column("secret", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("disabled_reason", sa.String(500), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    sa.Column("failing_since", UtcDateTime, nullable=True),
    # NULL owner: made before there were users, i.e. the admin's
    sa.Column("owner", Name, nullable=True),
    # true: receives every owner's events (an admin's), false: only its owner's
    sa.Column("all_owners", sa.Boolean, nullable=False, default=True, server_default=sa.true()),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", sa.Uuid, nullable=False),
    sa.Column("event_id", sa.Uuid, nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("task_id", sa.Uuid, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
    sa.Index("ix_webhook_deliveries_due", "webhook_id", "status", "next_attempt_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", BigId, nullable=False, index=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
)

# Users and their tokens. Only hashes are stored: argon2id of the password for
# sign-in, bcrypt of it (or of an API token) for nats-server, and the sha256
# digest a token is looked up by. No foreign key from tokens to users: a user
# is removed together with their tokens in one transaction.
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column("nats_password_hash", sa.String(100), nullable=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_login_at", UtcDateTime, nullable=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("user_name", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("nats_password_hash", sa.String(100), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("digest", name="uq_tokens_digest"),
)
