"""One event loop per command: ``@async_command`` makes an async function a typer command.

A command's whole body runs in one ``event_loop.run`` (``asyncio.run``, on uvloop
where installed), so it opens one client and keeps it for every request it makes.
Ctrl-C arrives inside as the cancellation of the command (``asyncio.CancelledError``
at the ``await`` it was waiting on): a command that must clean up (cancel a task,
say where it stopped) catches that.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from flowyard.services import event_loop

P = ParamSpec("P")
T = TypeVar("T")

Interrupted = asyncio.CancelledError
"""What Ctrl-C raises inside an ``async_command`` (the runner cancels its task)."""


def async_command(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The plain function typer calls; its signature (the options) is ``fn``'s."""

    @functools.wraps(fn)
    def command(*args: P.args, **kwargs: P.kwargs) -> T:
        return event_loop.run(fn(*args, **kwargs))

    return command


def resume_after_interrupt() -> None:
    """Call first in ``except Interrupted:`` that still awaits (cancel a task, say goodbye).

    The cancellation has been delivered; clearing it lets the clean-up's own awaits
    (and the timeouts inside them) run as usual.
    """
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
