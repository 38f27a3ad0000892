"""Replay decisions, free of I/O: which events a range selects, and rebuilding tasks from them.

A range bound is either a log position (an integer: the database ``seq`` or the
JetStream stream sequence) or a time (ISO 8601, or ``30m``/``2h``/``7d`` ago).
``since`` is inclusive and ``until`` exclusive, for positions and times alike.
``Rebuilder`` folds events task by task exactly as ``core.task.rebuild`` does
(events the state machine refuses are skipped), and ``differences`` compares a
rebuilt task with the live row, leaving out what events do not carry
(heartbeats move ``lease_expires_at``).

Errors name the filter's fields in backticks (`since`): the CLI turns them into its
option names (--since), another caller shows them as they are.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flowyard.core.errors import Conflict, InvalidInput
from flowyard.core.events import EVENT_TYPES, Event
from flowyard.core.task import Task, apply

Point = int | datetime

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
IGNORED_FIELDS = frozenset({"lease_expires_at"})
"""Heartbeats extend the lease on the row without an event: not a difference."""
MESSAGE_LIMIT = 500
"""The table keeps the first 500 characters of a progress message."""


def parse_point(value: str, field: str, now: datetime | None = None) -> Point:
    """A log position (``120``), a time (``2026-01-31T12:00:00Z``; no zone means UTC) or an age.

    ``field`` (``since``, ``until``) names the value in the error.
    """
    text = value.strip()
    if text.isdigit():
        return int(text)
    if match := _AGO.match(text):
        amount, unit = int(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"`{field}`: {value!r} is neither a sequence number (120), a time "
            "(2026-01-31T12:00:00Z) nor an age (30m, 2h, 7d)",
            field=field,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class EventFilter:
    """Which events a replay selects; every field narrows it."""

    since: Point | None = None
    until: Point | None = None
    task_id: uuid.UUID | None = None
    flow: str | None = None
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in self.types:
            if kind not in EVENT_TYPES:
                raise InvalidInput(
                    f"`type`: unknown event type {kind!r}; valid types: {', '.join(EVENT_TYPES)}",
                    field="type",
                )
        since, until = self.since, self.until
        if isinstance(since, int) and isinstance(until, int) and since >= until:
            raise InvalidInput(
                f"`since` {since} is not before `until` {until}: the range is empty "
                "(`since` is inclusive, `until` exclusive)",
                field="since",
            )
        if isinstance(since, datetime) and isinstance(until, datetime) and since >= until:
            raise InvalidInput(
                f"`since` {since.isoformat()} is not before `until` {until.isoformat()}",
                field="since",
            )

    @property
    def since_seq(self) -> int | None:
        return self.since if isinstance(self.since, int) else None

    @property
    def until_seq(self) -> int | None:
        return self.until if isinstance(self.until, int) else None

    @property
    def since_time(self) -> datetime | None:
        return self.since if isinstance(self.since, datetime) else None

    @property
    def until_time(self) -> datetime | None:
        return self.until if isinstance(self.until, datetime) else None

    def matches(self, seq: int, event: Event) -> bool:
        """The whole filter on one log entry (readers may apply parts of it earlier)."""
        if self.since_seq is not None and seq < self.since_seq:
            return False
        if self.until_seq is not None and seq >= self.until_seq:
            return False
        if self.since_time is not None and event.at < self.since_time:
            return False
        if self.until_time is not None and event.at >= self.until_time:
            return False
        if self.task_id is not None and event.task_id != self.task_id:
            return False
        if self.flow is not None and event.flow != self.flow:
            return False
        return not self.types or event.type in self.types

    def for_rebuild(self) -> EventFilter:
        """Rebuilding needs every event of a task: only the task and flow narrow it."""
        if self.since is not None or self.until is not None or self.types:
            raise InvalidInput(
                "`rebuild` folds every event of each task: it takes `task` and `flow`, "
                "not `since`, `until` or `type`",
                field="rebuild",
            )
        return self


@dataclass
class Rebuilder:
    """Tasks folded from their events, one event at a time (as ``core.task.rebuild``)."""

    tasks: dict[uuid.UUID, Task] = field(default_factory=dict)
    skipped: int = 0

    def add(self, event: Event) -> None:
        current = self.tasks.get(event.task_id)
        try:
            self.tasks[event.task_id] = apply(current, event)
        except Conflict:  # refused live as well (illegal transition, stale attempt, finished)
            self.skipped += 1


def differences(rebuilt: Task, live: Task) -> list[str]:
    """``field: log says X, table says Y`` for every field that disagrees."""
    left = _comparable(rebuilt)
    right = _comparable(live)
    return [
        f"{name}: log says {_show(left[name])}, table says {_show(right[name])}"
        for name in left
        if not _same(left[name], right[name])
    ]


def _comparable(task: Task) -> dict[str, Any]:
    data = task.model_dump(mode="json", exclude=set(IGNORED_FIELDS))
    data["message"] = (data.get("message") or "")[:MESSAGE_LIMIT]
    return data


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)  # MariaDB FLOAT is single precision
    return bool(a == b)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:119] + "…"
