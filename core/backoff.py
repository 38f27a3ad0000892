"""Waiting between attempts at something that is unavailable for a while.

One ``Backoff`` replaces the hand-written ``delay = min(delay * 2, cap)`` loops:
long-running loops (pullers, relays, schedulers, pollers) call ``failed()`` for the
next pause and ``succeeded()`` once the thing answers again. ``retry_forever`` is
the loop itself for the common shape: run a step, and on ``Unavailable`` log and
pause. The delays are deterministic; task retries with jitter are ``core.retry``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from flowyard.core.errors import Unavailable


@dataclass
class Backoff:
    """Doubling pauses from ``first`` up to ``cap`` seconds."""

    first: float = 0.2
    cap: float = 5.0
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next = min(self.first, self.cap)

    @property
    def current(self) -> float:
        """The pause the next ``failed()`` returns."""
        return self._next

    def failed(self) -> float:
        """The pause before the next attempt; the one after it is twice as long."""
        pause = self._next
        self._next = min(self._next * 2, self.cap)
        return pause

    def succeeded(self) -> None:
        self._next = min(self.first, self.cap)


async def retry_forever(
    step: Callable[[], Awaitable[object]],
    *,
    what: str,
    log: logging.Logger,
    backoff: Backoff | None = None,
) -> None:
    """Run ``step`` again and again; while it raises ``Unavailable``, pause and log it.

    Returns only when cancelled (or when ``step`` raises anything else, which is a bug
    or a configuration error that retrying would not mend).
    """
    backoff = backoff or Backoff()
    while True:
        try:
            await step()
        except Unavailable as exc:
            pause = backoff.failed()
            log.warning("%s: %s; retrying in %.1fs", what, exc.message, pause)
            await asyncio.sleep(pause)
        else:
            backoff.succeeded()
