"""Reporting attempts' ends one by one, for queues that cannot record several at once.

``WorkQueue.report_many`` is batch-shaped on every transport; where the store has
no transaction to share (JetStream publishes, the in-memory twin) the results go
out in order, and each refusal stays with its own result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from flowyard.core.errors import LeaseLost

E = TypeVar("E")


async def each_reported(
    report: Callable[[E], Awaitable[None]], events: Sequence[E]
) -> list[LeaseLost | None]:
    """``report`` each event in order; a refused one leaves its ``LeaseLost`` in its place."""
    outcomes: list[LeaseLost | None] = []
    for event in events:
        try:
            await report(event)
        except LeaseLost as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)
    return outcomes
