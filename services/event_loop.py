"""Which event loop every command runs on: uvloop where it is installed, else asyncio's.

uvloop's loop, callbacks and sockets are C: the same flows, queries and messages
cost the server and the workers less CPU (docs/performance.md, seventh sitting).
``FLOWYARD_EVENT_LOOP=asyncio`` keeps the standard loop (to compare, or to rule it
out when chasing a bug); it is read from the environment because the loop exists
before any settings file is read. Windows has no uvloop and always gets asyncio's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from flowyard.core.errors import ConfigError

T = TypeVar("T")

LoopName = Literal["uvloop", "asyncio"]
ENV = "FLOWYARD_EVENT_LOOP"


def chosen_loop() -> LoopName:
    """The loop ``run`` starts: the environment's choice, else uvloop if importable."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"{ENV}={wanted!r}: use 'auto', 'uvloop' or 'asyncio'")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if chosen_loop() == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop (Ctrl-C cancels ``main``, as asyncio's does)."""
    try:
        factory = loop_factory()
    except ConfigError:
        main.close()  # never awaited: no warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
