"""The pruner: rounds of small batches until nothing old is left, files removed after each.

Runs in every server (several may share a database: ``adapters/sql/retention.py``
locks with SKIP LOCKED), on ``retention_interval_seconds``, and on demand for an
admin (``POST /api/tasks/prune``, ``flowyard tasks prune``). Removing a task's
folder after its rows are gone means a crash in between leaves a folder
without a row, never a row without its files.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from flowyard.core.errors import Unavailable
from flowyard.core.events import utcnow
from flowyard.core.ports import Pruned, Retention, TaskFolders
from flowyard.core.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCHES = 1000
"""Batches per round: a huge backlog is worked off over several rounds."""


class Pruner:
    def __init__(self, retention: Retention, files: TaskFolders, settings: Settings) -> None:
        self.retention = retention
        self.files = files
        self.settings = settings

    async def prune(
        self,
        task_days: float | None,
        *,
        events_days: float | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> Pruned:
        """Everything older than the given ages (None: that kind is kept)."""
        now = now or utcnow()
        total = Pruned()
        batch = self.settings.retention_batch
        if task_days is not None:
            before = now - timedelta(days=task_days)
            for _ in range(MAX_BATCHES):
                done = await self.retention.prune_tasks(before, batch=batch, dry_run=dry_run)
                total.add(done)
                if not dry_run:
                    for task_id in done.tasks:
                        await self.files.delete_task(task_id)
                if dry_run or len(done.tasks) < batch:
                    break
        if events_days is not None:
            before = now - timedelta(days=events_days)
            for _ in range(MAX_BATCHES):
                done = await self.retention.prune_events(before, batch=batch * 10, dry_run=dry_run)
                total.add(done)
                if dry_run or done.events < batch * 10:
                    break
        if not dry_run:
            window = timedelta(hours=self.settings.idempotency_window_hours)
            total.keys += await self.retention.prune_keys(now - window)
        return total

    async def run(self) -> None:
        """The background loop (only when ``task_retention_days`` or events retention is set)."""
        s = self.settings
        while True:
            try:
                done = await self.prune(
                    s.task_retention_days, events_days=s.events_retention_days or None
                )
                if done.tasks or done.events:
                    log.info(
                        "pruned %d finished tasks, %d webhook deliveries, %d events",
                        len(done.tasks),
                        done.deliveries,
                        done.events,
                    )
            except Unavailable as exc:
                log.warning("pruning skipped: %s", exc.message)
            except Exception:  # one bad round must not stop pruning for good
                log.exception("pruning round failed")
            await asyncio.sleep(s.retention_interval_seconds)
