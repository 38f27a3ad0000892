"""Delivery rows for events announced on the bus, made from the record, not the message.

With NATS, webhook deliveries are created by a subscriber of the event stream
(``bus/nats/event_subscriber.py``) instead of a hook inside each write. The
stream also carries what NATS workers published before the server folded it,
and the server may refuse such an event (a stale attempt, a duplicate) or record
a different result (outputs that failed to arrive). So the subscriber only names
event ids: the rows are made from the events the log holds, in one transaction
(duplicates of rows already made are ignored), and an id the log does not hold
yet is reported back so the subscriber can look again later.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.delivery_recorder import DeliveryRecorder
from flowyard.adapters.sql.schema import events
from flowyard.core.events import parse_event


class SqlDeliveryIntake:
    """``on_rows`` is called after a commit that made delivery rows (wake the sender)."""

    def __init__(
        self, db: Database, recorder: DeliveryRecorder, on_rows: Callable[[], None] = lambda: None
    ) -> None:
        self.db = db
        self.recorder = recorder
        self.on_rows = on_rows

    async def take(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Make the delivery rows of the events the log holds; return the ids it holds.

        With no subscription at all there is nothing to make or to wait for: every id
        counts as taken, and no transaction is opened while the recorder's cached list
        is fresh and empty. A subscription reaches this intake as it reaches the
        in-transaction hook: at once when made in this process (the API invalidates
        the shared recorder), within the cache's 3 s from another process.
        """
        if not event_ids:
            return set()
        if self.recorder.knows_none():
            return set(event_ids)
        async with self.db.write() as tx:
            if not await self.recorder.subscriptions(tx.conn):
                return set(event_ids)
            bodies = await tx.conn.scalars(
                sa.select(events.c.body).where(events.c.id.in_(list(event_ids)))
            )
            recorded = [parse_event(body) for body in bodies]
            made = await self.recorder.record(tx, recorded)
        if made:
            self.on_rows()
        return {event.id for event in recorded}
