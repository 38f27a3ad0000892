"""Long-running parts of a process, each with ``start`` and ``stop``.

The composition root (``services/composition/``) lists a process's components in
the order they start; ``Components`` stops them in the reverse order, so what a
part uses (the database, a listener) outlives it. A loop that must finish its
work (a worker with running flows) is asked to stop and given a grace period; the
others are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Loop:
    """A coroutine that runs until the process stops (a reaper, a relay, a dispatcher).

    With ``ask_to_stop`` the loop is told to stop and awaited for up to ``grace``
    seconds before it is cancelled; without it, it is cancelled at once.
    """

    name: str
    run: Callable[[], Awaitable[None]]
    ask_to_stop: Callable[[], None] | None = None
    grace: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        self._task = asyncio.create_task(_logged(self.name, self.run), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self.ask_to_stop is not None:
            self.ask_to_stop()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), self.grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait(self) -> None:
        """Until the loop ends by itself (a worker that was told to stop)."""
        if self._task is not None:
            await asyncio.shield(self._task)


@dataclass
class Resource:
    """Something that only needs closing (a database pool, a NOTIFY connection)."""

    name: str
    close: Callable[[], Awaitable[None]]
    open: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        if self.open is not None:
            await self.open()

    async def stop(self) -> None:
        await self.close()


class Components:
    """Start in the listed order, stop in reverse; a part that fails to stop is logged."""

    def __init__(self) -> None:
        self.started: list[Component] = []

    def adopt(self, part: Component) -> None:
        """A part that is already running (opened while the process was built)."""
        self.started.append(part)

    async def start(self, parts: Iterable[Component]) -> None:
        for part in parts:
            await part.start()
            self.started.append(part)

    async def stop(self) -> None:
        while self.started:
            part = self.started.pop()
            try:
                await part.stop()
            except Exception:  # stopping the rest matters more than this one
                log.exception("stopping %s failed", part.name)


async def _logged(name: str, run: Callable[[], Awaitable[None]]) -> None:
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s stopped with an error", name)
        raise
