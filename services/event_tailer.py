"""Feeds the live hub (SSE, in-process subscribers) from the event log.

In server mode, database workers in other processes append events straight to
the ``events`` table, so the server learns of them only by reading the log.
The tailer follows it by ``seq``. Autoincrement ids commit out of order on
PostgreSQL and MariaDB (a transaction holding seq 11 may commit after the one
holding seq 12), so a hole in the sequence is not skipped but looked for again
for ``gap_seconds``; only then is it taken for a rolled-back write. On
PostgreSQL a ``LISTEN flowyard_events`` wakes the tailer within milliseconds;
polling stays as the fallback, and MariaDB polls with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flowyard.adapters.sql.event_tail import events_by_seq
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.wakeup import EVENTS_CHANNEL, PgNotifyWaker, PollWaker, listen_uri
from flowyard.core.backoff import Backoff
from flowyard.core.errors import Unavailable
from flowyard.core.events import Event
from flowyard.core.ports import Waker

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], None]

GAP_SECONDS = 10.0
"""How long a hole in ``seq`` is looked for again before it counts as a rollback."""
MAX_GAPS = 5000
"""Holes tracked at once; a larger jump (a sequence cache lost in a crash) is skipped."""
GAP_RECHECK_SECONDS = 0.1


@dataclass
class SeqGaps:
    """Where the tailer stands: the highest seq read and the holes below it (pure)."""

    cursor: int
    missing: dict[int, float] = field(default_factory=dict)

    def advance(self, seq: int, now: float) -> None:
        """``seq`` was read: every unseen seq between the cursor and it is a hole."""
        if seq <= self.cursor:
            self.missing.pop(seq, None)
            return
        hole = range(self.cursor + 1, seq)
        if len(self.missing) + len(hole) <= MAX_GAPS:
            for missing in hole:
                self.missing[missing] = now
        else:
            log.warning(
                "event log jumped from seq %d to %d: not waiting for the hole", self.cursor, seq
            )
        self.cursor = seq

    def found(self, seq: int) -> None:
        self.missing.pop(seq, None)

    def expire(self, now: float, after: float = GAP_SECONDS) -> int:
        """Forget holes older than ``after`` seconds (rolled back); return how many."""
        old = [seq for seq, since in self.missing.items() if now - since >= after]
        for seq in old:
            del self.missing[seq]
        return len(old)


class EventTailer:
    def __init__(
        self,
        store: SqlTaskStore,
        publish: Publish,
        waker: Waker,
        *,
        poll_interval: float = 2.0,
        batch: int = 500,
        gap_seconds: float = GAP_SECONDS,
    ) -> None:
        self.store = store
        self.publish = publish
        self.waker = waker
        self.poll_interval = poll_interval
        self.batch = batch
        self.gap_seconds = gap_seconds
        self.gaps: SeqGaps | None = None

    async def run(self) -> None:
        """Follow the log from its current end until cancelled; outages only pause it."""
        backoff = Backoff(first=0.2, cap=5.0)
        while True:
            self.waker.clear()
            try:
                full = await self.poll_once()
            except Unavailable as exc:
                log.warning("event tailer paused %.1fs: %s", backoff.current, exc.message)
                await asyncio.sleep(backoff.failed())
                continue
            except Exception:  # never let a bad row stop live events for good
                log.exception("event tailer failed; retrying in %.1fs", backoff.current)
                await asyncio.sleep(backoff.failed())
                continue
            backoff.succeeded()
            if full:
                continue
            gaps = self.gaps
            wait = GAP_RECHECK_SECONDS if gaps is not None and gaps.missing else self.poll_interval
            await self.waker.wait(wait)

    async def poll_once(self) -> bool:
        """Publish what was committed since the last call; True when a full batch was read."""
        loop = asyncio.get_running_loop()
        if self.gaps is None:  # live events only: start at the end of the log
            self.gaps = SeqGaps(await self.store.last_seq())
            return True
        gaps = self.gaps
        late: list[tuple[int, Event]] = []
        if gaps.missing:
            late = await events_by_seq(self.store.db, list(gaps.missing))
        rows = await self.store.events_after(gaps.cursor, self.batch)
        now = loop.time()
        for seq, _ in late:
            gaps.found(seq)
        for seq, _ in rows:
            gaps.advance(seq, now)
        expired = gaps.expire(now, self.gap_seconds)
        if expired:
            log.debug("gave up on %d event seqs (rolled back)", expired)
        self.waker.found_work(bool(rows))
        published = [event for _, event in late] + [event for _, event in rows]
        if published:
            self.publish(published)
        return len(rows) >= self.batch


async def run_event_tailer(
    store: SqlTaskStore, publish: Publish, *, poll_interval: float = 2.0
) -> None:
    """Tail ``store``'s log into ``publish`` until cancelled, with the database's wake-ups."""
    waker: Waker
    if store.db.dialect == "postgresql":
        pg = PgNotifyWaker(listen_uri(store.db.engine), poll_interval, channel=EVENTS_CHANNEL)
        await pg.start()
        waker = pg
    else:
        waker = PollWaker(min(poll_interval, 1.0))
    try:
        await EventTailer(store, publish, waker, poll_interval=poll_interval).run()
    finally:
        await waker.close()
