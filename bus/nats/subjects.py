"""The NATS subject grammar: every subject flowyard uses, and the tokens and names built from it.

    flowyard.events.<kind>.<owner>.<flow>       every task event (FLOWYARD_EVENTS)
    flowyard.work.<owner>.<flow>                a task's work message (FLOWYARD_WORK_<owner>)
    flowyard.wake.<owner>.<flow>                core NATS: work was stored, pull now
    flowyard.rpc.lease.<owner>.<flow>           request-reply: a worker's heartbeat
    flowyard.workers.<owner | _all>             core NATS: worker presence

Owner and flow are tokens of their own so that permissions and subscribers can
match either; ``token`` keeps a value from splitting or widening a subject, and
``name_token`` makes a stream, consumer or bucket name from it.
"""

from __future__ import annotations

import hashlib
import re

from flowyard.core.events import EventBase

PREFIX = "flowyard"
EVENTS_SUBJECTS = f"{PREFIX}.events.>"
WORKER_EVENT_KINDS = ("claimed", "progress", "done", "requeued")
"""The event kinds NATS workers publish and the server folds into the task table."""


def token(value: str) -> str:
    """A subject token: dots, spaces and wildcards would split or widen the subject."""
    return value.replace(".", "_").replace(" ", "_").replace("*", "_").replace(">", "_")


def name_token(value: str) -> str:
    """A NATS stream, consumer or bucket name part: letters, digits, ``_`` and ``-`` only.

    Names that ``token`` keeps distinct stay distinct: when other characters had to
    be replaced, a short hash of the token is appended (``a@b`` -> ``a_b_1f0c…``).
    """
    subject_token = token(value)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", subject_token)
    if safe == subject_token and safe:
        return safe
    return f"{safe}_{hashlib.sha256(subject_token.encode()).hexdigest()[:8]}"


def subject_for(event: EventBase, prefix: str = PREFIX) -> str:
    """The subject of an event: ``<prefix>.events.<type>.<owner>.<flow>``.

    Type and flow are tokens of their own so that subscribers can filter on either.
    """
    kind = event.model_dump(include={"type"})["type"].split(".", 1)[1]
    return f"{prefix}.events.{kind}.{token(event.owner)}.{token(event.flow)}"


def event_subject(event_type: str, owner: str, flow: str) -> str:
    """``subject_for`` from an event's stored columns (no parsing)."""
    return f"{PREFIX}.events.{event_type.split('.', 1)[1]}.{token(owner)}.{token(flow)}"


def work_subject(owner: str, flow: str) -> str:
    return f"{PREFIX}.work.{token(owner)}.{token(flow)}"


def wake_subject(owner_token: str, flow_token: str) -> str:
    """Core NATS (not stored): sent after work was stored, so idle workers pull at once."""
    return f"{PREFIX}.wake.{owner_token}.{flow_token}"


def owner_filter(owner: str | None) -> str:
    """The owner token a worker listens on: its owner's, or every owner's for an admin."""
    return "*" if owner is None else token(owner)


def cancel_subject(owner: str | None, flow: str) -> str:
    return f"{PREFIX}.events.cancel_requested.{owner_filter(owner)}.{token(flow)}"


def lease_subject(owner: str, flow: str) -> str:
    """Request-reply: a worker's heartbeat asks the server about its attempt."""
    return f"{PREFIX}.rpc.lease.{token(owner)}.{token(flow)}"


def workers_subject(owner: str | None) -> str:
    """Worker presence, so ``GET /api/workers`` lists NATS workers too."""
    return f"{PREFIX}.workers.{'_all' if owner is None else token(owner)}"


def worker_event_filters() -> list[str]:
    return [f"{PREFIX}.events.{kind}.>" for kind in WORKER_EVENT_KINDS]


def subject_tokens(subject: str) -> list[str]:
    return subject.split(".")


def split_work_subject(subject: str) -> tuple[str, str] | None:
    """``(owner token, flow token)`` of a work or wake subject; None for anything else."""
    parts = subject_tokens(subject)
    if len(parts) == 4 and parts[0] == PREFIX and parts[1] in ("work", "wake"):
        return parts[2], parts[3]
    return None
