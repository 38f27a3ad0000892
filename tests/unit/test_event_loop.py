"""The loop every command runs on: uvloop by default, asyncio's on request, errors named."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from flowyard.core.errors import ConfigError
from flowyard.services import event_loop


async def _loop_class() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.chosen_loop() == "uvloop"
    assert event_loop.run(_loop_class()).startswith("uvloop")


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.run(_loop_class()).startswith("asyncio")


def test_a_bad_choice_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "trio")
    coro = _loop_class()
    with pytest.raises(ConfigError, match="FLOWYARD_EVENT_LOOP='trio'"):
        event_loop.run(coro)
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


def test_the_runner_cancels_main_on_ctrl_c_as_asyncio_run_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``async_command`` relies on Ctrl-C arriving as the cancellation of its body."""
    pytest.importorskip("uvloop")
    monkeypatch.delenv(event_loop.ENV, raising=False)
    seen: list[str] = []

    async def body() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    # as from a terminal: a background job (CI started with '&') inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            event_loop.run(body())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == ["cancelled"]
