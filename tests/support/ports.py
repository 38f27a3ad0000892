"""Ports and process plumbing shared by the throwaway test servers.

Besides free_port(), this holds what every server wrapper needs and neither
should import from the other: killing a process tree and reaping it, a
parent-death signal, the atexit safety net, and a sync bridge for coroutines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The OS picks it (bind to port 0); the race until the server binds it is
    absorbed by the wrappers, which retry auto-chosen ports on "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_coroutine_in_thread(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run factory() to completion on a private loop in a worker thread.

    The helpers' sync API (start(), fixtures) must also work when called from
    inside a running event loop, where asyncio.run() is refused.
    """

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-support") as pool:
        return pool.submit(asyncio.run, bounded()).result()


# --------------------------------------------------------------------------- processes


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server if the test process dies without cleanup.

    Runs in the child after fork and after setuid (CPython applies user= before
    preexec_fn; the kernel would clear the setting on a credential change).
    """
    assert _PRCTL is not None
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # parent already gone before prctl took effect
        os._exit(1)


def parent_death_preexec() -> Callable[[], None] | None:
    """A preexec_fn tying the child's life to this process, when that is safe.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    used from the main thread; elsewhere the atexit net is the only guard.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    return _die_with_parent


@contextlib.contextmanager
def _subreaper() -> Iterator[bool]:
    """Adopt orphans while killing a tree, so we can reap them ourselves.

    Killed PostgreSQL backends are re-parented when the postmaster dies; an init
    that reaps lazily (as in some containers) would leave them as zombies.
    """
    enabled = _PRCTL is not None and _PRCTL(_PR_SET_CHILD_SUBREAPER, 1) == 0
    try:
        yield enabled
    finally:
        if enabled and _PRCTL is not None:
            _PRCTL(_PR_SET_CHILD_SUBREAPER, 0)


def _reap(pids: Iterable[int], timeout: float) -> None:
    """Wait (bounded) until pids are dead and, where they are ours, reaped."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pending.discard(pid)
                continue
            except ChildProcessError:
                pass  # not (or not yet) our child: just wait for it to die
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    pending.discard(pid)
            except psutil.NoSuchProcess:
                pending.discard(pid)
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def kill_tree(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL a server, its process group and all its descendants; reap them.

    PostgreSQL backends call setsid(), so killing the postmaster's group alone
    would leave them running (and holding the shared memory a restart needs).
    """
    with _subreaper():
        pids: set[int] = set()
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        _reap(pids, timeout)


_LIVE: dict[int, Callable[[], None]] = {}
_LIVE_LOCK = threading.Lock()


def track(owner: object, killer: Callable[[], None]) -> None:
    """Remember a running server so the safety net can kill it."""
    with _LIVE_LOCK:
        _LIVE[id(owner)] = killer


def untrack(owner: object) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(id(owner), None)


def tracked_count() -> int:
    """How many servers started by these helpers are still running."""
    with _LIVE_LOCK:
        return len(_LIVE)


def kill_all_tracked() -> None:
    """Kill every server still registered (atexit, and the plugin's session end)."""
    with _LIVE_LOCK:
        killers = list(_LIVE.values())
    for killer in killers:
        with contextlib.suppress(OSError, psutil.Error, subprocess.SubprocessError):
            killer()
    with _LIVE_LOCK:
        _LIVE.clear()


atexit.register(kill_all_tracked)
