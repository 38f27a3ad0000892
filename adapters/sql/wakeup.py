"""Wake-ups for database workers in other processes than the server.

``PollWaker`` is the fallback for every database (MariaDB has no NOTIFY): an idle
worker polls with exponential backoff up to ``poll_interval``, and polls fast
again as soon as a claim finds work, so an idle fleet barely loads the database.
"""

from __future__ import annotations

import asyncio
import contextlib


class PollWaker:
    def __init__(self, poll_interval: float, min_interval: float = 0.05) -> None:
        self._max = poll_interval
        self._min = min(min_interval, poll_interval)
        self._next = self._min
        self._kick = asyncio.Event()

    def clear(self) -> None:
        self._kick.clear()

    def kick(self) -> None:
        self._kick.set()

    def found_work(self, found: bool) -> None:
        self._next = self._min if found else min(self._next * 2, self._max)

    async def wait(self, max_wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), min(self._next, max_wait))

    async def close(self) -> None:
        self._kick.set()
