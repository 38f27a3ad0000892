"""SQLite without aiosqlite's thread: each call runs on the event loop's own thread.

aiosqlite hands every call (cursor, execute, fetch, commit) to a thread of its own
and back, and SQLAlchemy makes several such calls per statement. Each trip wakes a
thread and hands the GIL over and back, which costs far more than the statement:
SQLite on a local file in WAL mode answers in microseconds. In default mode this
process is the database's only writer (``Database`` serialises its writes, the data
folder's lock keeps a second server out), so the calls run in place, on the same
aiosqlite objects SQLAlchemy's ``sqlite+aiosqlite`` dialect expects. The price: a
write that waits on another process's lock (an admin command writing the same file)
holds the event loop for that wait, up to ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite


class _RunAtOnce:
    """Stands in for aiosqlite's queue to its thread: a call runs as it is queued."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:  # noqa: BLE001 -- handed to the caller, as aiosqlite does
            if future is not None and not future.done():
                future.set_exception(exc)
        else:
            if future is not None and not future.done():
                future.set_result(result)


class _NoThread:
    """Stands in for aiosqlite's thread, which is never started."""

    daemon = True

    def start(self) -> None:
        return None

    def join(self, timeout: float | None = None) -> None:
        return None

    def is_alive(self) -> bool:
        return False


class InlineConnection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection], iter_chunk_size: int) -> None:
        super().__init__(connector, iter_chunk_size)
        self._tx = _RunAtOnce()  # type: ignore[assignment]
        self._thread = _NoThread()  # type: ignore[assignment]


def connect(database: str, *, iter_chunk_size: int = 64, **kwargs: Any) -> InlineConnection:
    """``aiosqlite.connect``'s signature, for SQLAlchemy's ``async_creator_fn``."""
    kwargs.setdefault("check_same_thread", False)  # a pooled connection may meet another loop
    return InlineConnection(functools.partial(sqlite3.connect, database, **kwargs), iter_chunk_size)
