"""Real flowyard processes for end-to-end tests: servers and workers as subprocesses.

Each process writes its output to a log file (under the test's ``tmp_path``);
the ``flowyard_processes`` fixture kills whatever is still running after the
test and prints every log's tail, which pytest shows only when the test failed.

    def test_it(flowyard_processes: ProcessGroup) -> None:
        server = flowyard_processes.start_server(["--mode", "server", "--db", uri, ...])
        server.wait_healthy()
        worker = flowyard_processes.start_worker(["--db", uri, "--files", str(files)])
        ...
        worker.terminate()  # SIGTERM, bounded wait, SIGKILL fallback; returns the exit code

Every wait here is bounded and fails with the log tails of the processes involved.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.auth import ADMIN_AUTH
from tests.support.ports import free_port, kill_tree, parent_death_preexec, track, untrack

TAIL_CHARS = 3000


class ProcessError(AssertionError):
    """A flowyard process did not do what the test waited for; carries its log tail."""


def flowyard_command() -> list[str]:
    """How to run the ``flowyard`` CLI: the console script next to this interpreter."""
    script = Path(sys.executable).parent / "flowyard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from services.cli.main import main; main()"]


class ManagedProcess:
    """One child process with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        url: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.url = url
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                process_group=0,  # Ctrl-C on pytest must not reach it; we stop it ourselves
                preexec_fn=parent_death_preexec(),
            )
        track(self, self.kill)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code; raise ``ProcessError`` (with the log) if it runs on."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessError(
                f"{self.name} still running after {timeout:.0f}s\n{self.log_tail()}"
            ) from None
        untrack(self)
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL when it does not stop in time. Returns the exit code."""
        if self.alive():
            self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        untrack(self)
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the process and anything it started, and reap them."""
        if self.proc.poll() is None:
            kill_tree(self.proc)
        untrack(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = TAIL_CHARS) -> str:
        text = self.log_text()
        cut = "…" if len(text) > chars else ""
        return (
            f"----- {self.name} (pid {self.pid}, log {self.log_path}) -----\n{cut}{text[-chars:]}"
        )

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex); fail early if the process exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log_text())
            if found:
                return found
            if not self.alive():
                raise ProcessError(
                    f"{self.name} exited ({self.returncode}) before logging {pattern!r}\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name} did not log {pattern!r} in {timeout:.0f}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, object]:
        """Wait until ``GET /api/health`` answers 200 (servers only); return its body."""
        if self.url is None:
            raise ValueError(f"{self.name} has no URL; start it with start_server")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(auth=ADMIN_AUTH, base_url=self.url, timeout=2.0) as client:
            while True:
                if not self.alive():
                    raise ProcessError(
                        f"{self.name} exited ({self.returncode}) before it was healthy\n"
                        f"{self.log_tail()}"
                    )
                try:
                    response = client.get("/api/health")
                    if response.status_code == 200:
                        body: dict[str, object] = response.json()
                        return body
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ProcessError(
                        f"{self.name} not healthy after {timeout:.0f}s ({last})\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"ManagedProcess({self.name}, pid {self.pid}, {state})"


def _option(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


class ProcessGroup:
    """Starts flowyard processes for one test and stops them all at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Any command, with the same log capture and cleanup."""
        process = ManagedProcess(name, argv, self._log_path(name), env)
        self.processes.append(process)
        return process

    def start_server(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, *, name: str = "server"
    ) -> ManagedProcess:
        """``flowyard serve ARGS``; a free port on 127.0.0.1 is added unless ARGS has one."""
        args = list(args)
        port = _option(args, "--port")
        if port is None:
            port = str(free_port())
            args += ["--port", port]
        host = _option(args, "--host")
        if host is None:
            host = "127.0.0.1"
            args += ["--host", host]
        process = ManagedProcess(
            name,
            [*flowyard_command(), "serve", *args],
            self._log_path(name),
            env,
            url=f"http://{host}:{port}",
        )
        self.processes.append(process)
        return process

    def start_worker(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, *, name: str | None = None
    ) -> ManagedProcess:
        """``flowyard worker ARGS``; ``name`` defaults to the ``--name`` flag or worker-N."""
        name = name or _option(args, "--name") or f"worker-{len(self.processes)}"
        process = ManagedProcess(
            name, [*flowyard_command(), "worker", *args], self._log_path(name), env
        )
        self.processes.append(process)
        return process

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM everything still running, then SIGKILL what did not stop in time."""
        running = [p for p in self.processes if p.alive()]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            process.kill()

    def tails(self) -> str:
        return "\n".join(p.log_tail() for p in self.processes)

    def _log_path(self, name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        path = self.log_dir / f"{safe}.log"
        n = 1
        while path.exists():
            n += 1
            path = self.log_dir / f"{safe}-{n}.log"
        return path


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    group: ProcessGroup | None = None,
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` with ``what`` and the logs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            logs = f"\n{group.tails()}" if group is not None else ""
            raise ProcessError(f"timed out after {timeout:.0f}s waiting for {what}{logs}")
        time.sleep(interval)


def unfinished_count(base_url: str) -> int:
    """Queued plus running tasks on the server at ``base_url`` (at most 1 + 1 counted)."""
    with httpx.Client(auth=ADMIN_AUTH, base_url=base_url, timeout=5.0) as client:
        total = 0
        for state in ("queued", "running"):
            response = client.get("/api/tasks", params={"state": state, "limit": 1})
            response.raise_for_status()
            total += len(response.json()["items"])
        return total


def wait_all_finished(base_url: str, timeout: float, *, group: ProcessGroup | None = None) -> None:
    """Wait until the server has no queued or running task (one fresh database per test)."""

    def finished() -> bool:
        try:
            return unfinished_count(base_url) == 0
        except httpx.HTTPError:
            return False  # e.g. 503 while its database restarts

    wait_until(finished, timeout, f"every task on {base_url} to finish", interval=0.2, group=group)


@pytest.fixture
def flowyard_processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start servers and workers; all are stopped after the test and their log tails printed."""
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()
        if group.processes:
            print(group.tails())  # shown by pytest only when the test failed
