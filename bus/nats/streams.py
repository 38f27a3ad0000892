"""Stream and consumer names, their configurations, and ``ensure_*`` to apply them.

    FLOWYARD_EVENTS         flowyard.events.<kind>.<owner>.<flow>   limits: every task event
    FLOWYARD_WORK_<owner>   flowyard.work.<owner>.<flow>            work queue: one per owner
      consumer <flow>       filter flowyard.work.<owner>.<flow>     durable pull, explicit ack
    FLOWYARD_ADVISORIES     $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>   (kept 1 day)

A work-queue stream refuses consumers whose filters overlap; one durable
consumer per exact subject ``flowyard.work.<owner>.<flow>`` can never overlap,
and every worker that serves that owner and flow binds to the same consumer. A
stream per owner lets a NATS account be given exactly its owner's work: NATS
permissions match whole subject tokens, and a stream name is one token of the
JetStream API subjects (``$JS.API.CONSUMER.MSG.NEXT.FLOWYARD_WORK_alice.*``).

FastStream updates streams but never an existing durable consumer, and a
changed ack wait or MaxDeliver would be silently ignored; ``ensure_consumer``
compares and updates (or recreates) it here instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from flowyard.bus.nats.subjects import (
    EVENTS_SUBJECTS,
    PREFIX,
    name_token,
    token,
    work_subject,
    worker_event_filters,
)
from flowyard.core.errors import ConfigError

log = logging.getLogger(__name__)

EVENTS_STREAM = "FLOWYARD_EVENTS"
WORK_STREAM_PREFIX = "FLOWYARD_WORK_"
ADVISORY_STREAM = "FLOWYARD_ADVISORIES"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
SERVER_CONSUMER = "flowyard_server"

DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a ``Nats-Msg-Id`` (the relay retries well within it)."""

MSG_ID = "Nats-Msg-Id"
ATTEMPT_BASE = "Flowyard-Attempt-Base"
"""Work message header: attempts already used when it was sent; attempt = base + delivery."""
WORKER = "Flowyard-Worker"
"""Header on worker events: who published it (results must come from the attempt's holder)."""
ORIGIN = "Flowyard-Origin"
"""Header on relayed server events, so the server's own consumer skips them cheaply."""


# ------------------------------------------------------------------- streams, consumers


def work_stream(owner: str) -> str:
    return f"{WORK_STREAM_PREFIX}{name_token(owner)}"


def work_consumer(flow: str) -> str:
    return name_token(flow)


def events_stream_config(max_age_hours: float, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        description="Every flowyard task event (the source for replay and webhooks)",
        subjects=[EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_hours * 3600.0,
        max_bytes=max_bytes,
        duplicate_window=DUPLICATE_WINDOW,
    )


def work_stream_config(owner: str) -> StreamConfig:
    return StreamConfig(
        name=work_stream(owner),
        description=f"flowyard work for owner {owner!r}",
        subjects=[f"{PREFIX}.work.{token(owner)}.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,
    )


def advisory_stream_config() -> StreamConfig:
    """MaxDeliver advisories are core NATS messages; stored, none is missed while we restart."""
    return StreamConfig(
        name=ADVISORY_STREAM,
        description="JetStream MaxDeliver advisories, for the flowyard server",
        subjects=[f"{MAX_DELIVERIES_ADVISORY}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=24 * 3600.0,
        # nats-server's own default, said out loud: left at 0 it reads back as 120 s and
        # the topology keeper "updated" the stream every round
        duplicate_window=120.0,
    )


def work_consumer_config(
    owner: str, flow: str, *, lease_seconds: float, max_attempts: int
) -> ConsumerConfig:
    """AckWait is the lease, +WPI the heartbeat, MaxDeliver the attempt limit."""
    return ConsumerConfig(
        durable_name=work_consumer(flow),
        description=f"flowyard workers of {flow!r} for {owner!r}",
        filter_subject=work_subject(owner, flow),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=lease_seconds,
        max_deliver=max_attempts,
        max_ack_pending=10_000,
        deliver_policy=DeliverPolicy.ALL,
    )


def server_consumer_config(ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=SERVER_CONSUMER,
        description="flowyard server: events published by NATS workers",
        filter_subjects=worker_event_filters(),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=20_000,
        deliver_policy=DeliverPolicy.ALL,
    )


def advisory_consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=SERVER_CONSUMER,
        description="flowyard server: tasks whose work hit MaxDeliver",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60.0,
        max_deliver=-1,
        deliver_policy=DeliverPolicy.ALL,
    )


# ---------------------------------------------------------------------------- compare

_STREAM_FIELDS = ("retention", "storage", "max_age", "max_bytes", "duplicate_window", "discard")
_CONSUMER_FIELDS = (
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "filter_subject",
    "filter_subjects",
    "deliver_policy",
)
_IMMUTABLE_STREAM = ("retention", "storage")


def _norm(value: Any) -> Any:
    if value is None or value == []:
        return None
    if isinstance(value, list):
        return sorted(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-3)
    return bool(a == b)


def stream_differences(existing: StreamConfig, desired: StreamConfig) -> list[str]:
    """What differs, as ``field: have -> want``; a subject we need but miss is a difference."""
    out = [
        f"{name}: {getattr(existing, name)!r} -> {getattr(desired, name)!r}"
        for name in _STREAM_FIELDS
        if getattr(desired, name) is not None
        and not _same(getattr(existing, name), getattr(desired, name))
    ]
    missing = set(desired.subjects or ()) - set(existing.subjects or ())
    if missing:
        out.append(f"subjects: missing {sorted(missing)}")
    return out


def consumer_differences(existing: ConsumerConfig, desired: ConsumerConfig) -> list[str]:
    # the server reports filter_subjects with one entry as filter_subject, and vice versa
    have = _filters(existing)
    want = _filters(desired)
    out = [] if have == want else [f"filters: {sorted(have)} -> {sorted(want)}"]
    out += [
        f"{name}: {getattr(existing, name)!r} -> {getattr(desired, name)!r}"
        for name in _CONSUMER_FIELDS
        if name not in ("filter_subject", "filter_subjects")
        and getattr(desired, name) is not None
        and not _same(getattr(existing, name), getattr(desired, name))
    ]
    return out


def _filters(config: ConsumerConfig) -> set[str]:
    found = set(config.filter_subjects or ())
    if config.filter_subject:
        found.add(config.filter_subject)
    return found


# ----------------------------------------------------------------------------- ensure


async def ensure_stream(js: JetStreamContext, desired: StreamConfig) -> bool:
    """Create the stream, or bring an existing one to ``desired`` (subjects are merged).

    True when it had to be created: at the first start, or after JetStream lost it.
    """
    assert desired.name is not None
    try:
        info = await js.stream_info(desired.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(desired)
        log.info("created stream %s", desired.name)
        return True
    diffs = stream_differences(info.config, desired)
    if not diffs:
        return False
    immutable = [d for d in diffs if d.split(":", 1)[0] in _IMMUTABLE_STREAM]
    if immutable:
        raise ConfigError(
            f"stream {desired.name} exists with {', '.join(immutable)}, which cannot be "
            f"changed in place: remove it ('nats stream rm {desired.name}') or restore it"
        )
    merged = sorted(set(info.config.subjects or ()) | set(desired.subjects or ()))
    await js.update_stream(_evolve(desired, subjects=merged))
    log.warning("updated stream %s: %s", desired.name, "; ".join(diffs))
    return False


async def ensure_consumer(js: JetStreamContext, stream: str, desired: ConsumerConfig) -> bool:
    """Create the durable consumer, or update it; recreate it when NATS refuses the update.

    True when it did not exist (created now).
    """
    name = desired.durable_name
    assert name is not None
    try:
        info = await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, desired)
        log.info("created consumer %s on %s", name, stream)
        return True
    diffs = consumer_differences(info.config, desired)
    if not diffs:
        return False
    try:
        await js.add_consumer(stream, desired)  # create-or-update: edits what NATS allows
        log.warning("updated consumer %s on %s: %s", name, stream, "; ".join(diffs))
    except nats.js.errors.BadRequestError as exc:
        # Unacked messages of a work queue survive the consumer and are delivered again.
        log.warning("recreating consumer %s on %s (%s): %s", name, stream, exc, "; ".join(diffs))
        await js.delete_consumer(stream, name)
        await js.add_consumer(stream, desired)
    return False


def _evolve(config: StreamConfig, **changes: Any) -> StreamConfig:
    return config.evolve(**changes)


def owned_streams(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(WORK_STREAM_PREFIX))
