"""Which NOTIFYs ride in a transaction and which wait for their window (no database)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from flowyard.adapters.sql.wakeup import (
    CANCEL_CHANNEL,
    EVENTS_CHANNEL,
    WINDOWS,
    WORK_CHANNEL,
    PgNotifier,
)
from flowyard.core.events import TaskCancelRequested, TaskCreated


def notifier() -> PgNotifier:
    return PgNotifier(create_async_engine("postgresql+psycopg://localhost/none"))


def created(flow: str = "debug.sleep") -> TaskCreated:
    return TaskCreated(task_id=uuid.uuid4(), flow=flow, params={})


def channels(sent: list[tuple[str, str]]) -> set[str]:
    return {channel for channel, _ in sent}


def test_work_created_after_the_short_work_window_notifies_in_its_own_transaction() -> None:
    n = notifier()
    assert channels(n.sort_out([created()], now=10.0)) == {WORK_CHANNEL, EVENTS_CHANNEL}
    # 20 ms later: past the work window (a worker hears at once), within the events one
    later = 10.0 + 0.02
    assert WINDOWS[WORK_CHANNEL] < 0.02 < WINDOWS[EVENTS_CHANNEL]
    assert n.sort_out([created()], now=later) == [(WORK_CHANNEL, "debug.sleep")]


def test_within_a_window_the_notify_is_held_for_the_trailing_one_not_dropped() -> None:
    n = notifier()
    n.sort_out([created()], now=10.0)
    held = created()
    assert n.sort_out([held], now=10.001) == []
    # owed once its transaction commits (on_commit then schedules the trailing NOTIFY)
    assert n._suppressed[held.id] == {(WORK_CHANNEL, "debug.sleep"), (EVENTS_CHANNEL, "")}


def test_flows_have_windows_of_their_own_and_a_cancel_is_never_held_back() -> None:
    n = notifier()
    n.sort_out([created("a")], now=10.0)
    assert (WORK_CHANNEL, "b") in n.sort_out([created("b")], now=10.001)
    cancel = TaskCancelRequested(task_id=uuid.uuid4(), flow="a")
    for at in (10.002, 10.003):
        assert (CANCEL_CHANNEL, str(cancel.task_id)) in n.sort_out([cancel], now=at)
