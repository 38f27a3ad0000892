"""What runs inside, and right after, every write that records events.

Each process kind builds its list in ``services/composition/`` and registers it
here, so one place shows how recording ``task.done`` creates a webhook delivery
row (a hook in the same transaction) or wakes a worker (a listener after commit).
``docs/architecture.md`` quotes the lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flowyard.adapters.sql.database import CommitListener, Database, TxHook


@dataclass(frozen=True)
class InTransaction:
    """Runs inside the write, so its rows commit (or roll back) with the events."""

    what: str
    hook: TxHook


@dataclass(frozen=True)
class AfterCommit:
    """Runs once the write committed; no I/O (it wakes or hands events on)."""

    what: str
    listener: CommitListener


Hook = InTransaction | AfterCommit


def register(db: Database, hooks: Iterable[Hook | None]) -> tuple[Hook, ...]:
    """Register the hooks that apply (``None`` marks one this process does not use)."""
    chosen = tuple(hook for hook in hooks if hook is not None)
    for hook in chosen:
        if isinstance(hook, InTransaction):
            db.in_transaction(hook.hook)
        else:
            db.on_commit(hook.listener)
    return chosen


def describe(hooks: Iterable[Hook]) -> list[str]:
    """``in transaction: webhook delivery rows`` …, for logs, tests and the docs."""
    return [
        f"{'in transaction' if isinstance(h, InTransaction) else 'after commit'}: {h.what}"
        for h in hooks
    ]
