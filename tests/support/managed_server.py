"""What the throwaway test servers share: a process on 127.0.0.1 that keeps its port.

Subclasses say how to prepare their files and how to launch and wait for
readiness; start (with a retry when the auto-chosen port was taken meanwhile),
graceful stop, kill -9 and restart are the same for every server.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import ClassVar

from tests.support.ports import free_port, kill_tree, untrack


class PortInUse(RuntimeError):
    """Another process grabbed the auto-chosen port between free_port() and bind."""


def log_tail(path: Path, offset: int = 0, max_chars: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")[-max_chars:]
    except FileNotFoundError:
        return "<no log file>"


class ManagedServer:
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 10.0

    def __init__(self, port: int | None, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self._port = port if port is not None else free_port()
        self._port_chosen_by_us = port is None
        self._started_once = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        if self.is_running():
            return
        self._prepare()
        attempts = 3 if (self._port_chosen_by_us and not self._started_once) else 1
        for attempt in range(attempts):
            try:
                self._launch_and_wait()
            except PortInUse:
                if attempt == attempts - 1:
                    raise
                self._port = free_port()
            else:
                self._started_once = True
                return

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown with ``stop_signal``; SIGKILL if stuck."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server and everything it started, like a crash; then reap."""
        proc = self._proc
        if proc is None:
            return
        kill_tree(proc)
        self._forget()

    def restart(self) -> None:
        """Stop (if running) and start again with the same port and files."""
        self.stop()
        self.start()

    def _prepare(self) -> None:
        """Create what the server needs on disk before each start."""

    def _launch_and_wait(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        untrack(self)
        self._proc = None
