"""One server per data folder: an exclusive ``flock`` on ``<data dir>/flowyard.lock``.

A second ``flowyard serve`` on the same folder would take the first one's
in-process worker for dead and requeue its running tasks, then fail to bind the
port. The lock is taken before the database is opened and held for as long as
the server runs; the kernel drops it when the process ends, however it ends
(kill -9 included), so a stale lock file never blocks a restart. The file holds
the holder's pid and URL, only to name it in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from flowyard.core.errors import DataDirInUse

LOCK_NAME = "flowyard.lock"


class DataDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, holder: str) -> DataDirLock:
        """Lock ``data_dir`` or raise ``DataDirInUse`` naming the process that holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd) or "another process"
            os.close(fd)
            raise DataDirInUse(
                f"{data_dir.resolve()} is in use by a running flowyard serve ({owner}): "
                "stop it first, or give this one another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {holder}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return ""
