"""``flowyard worker --gpus all|0,2``: one worker process per GPU.

Each child is the same ``flowyard worker`` command without ``--gpus``, with
``CUDA_VISIBLE_DEVICES`` set to its one device and ``-gpu<N>`` appended to its
name, so it sees exactly one GPU as ``cuda:0`` and reports it. Flows choose
their device from the worker (``ctx.device``), never by themselves. The parent
only supervises: SIGTERM and SIGINT reach every child, and it exits when they
all have, with the worst exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from flowyard.core.errors import ConfigError
from flowyard.flows.device import cuda_device_count

log = logging.getLogger(__name__)


def gpu_list(spec: str, count: Callable[[], int] = cuda_device_count) -> list[str]:
    """``all`` (every visible device) or comma-separated device indexes, each once."""
    if spec.strip() == "all":
        found = count()
        if found == 0:
            raise ConfigError("--gpus all: torch sees no CUDA device here")
        return [str(i) for i in range(found)]
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise ConfigError(f"--gpus {spec!r}: give 'all' or device numbers such as 0,2")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--gpus {spec!r}: a device is named twice")
    return parts


def child_argv(argv: Sequence[str], gpu: str, name: str, index: int = 0) -> list[str]:
    """The worker's own arguments without ``--gpus`` and ``--name``, named for its GPU.

    A ``--metrics-port P`` becomes ``P + index``: every child needs a port of its own.
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        takes_value = not eq and flag in ("--gpus", "--name", "--metrics-port")
        value = inline if eq else (args[i + 1] if takes_value and i + 1 < len(args) else "")
        i += 2 if takes_value else 1
        if flag in ("--gpus", "--name"):
            continue
        if flag == "--metrics-port" and value.isdigit():
            out += ["--metrics-port", str(int(value) + index)]
            continue
        out.append(arg)
    return [*out, "--name", f"{name}-gpu{gpu}"]


def run_per_gpu(argv: Sequence[str], gpus: Sequence[str], name: str | None) -> int:
    """Start one child per GPU and wait for all of them."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    command = [sys.executable, "-c", "from services.cli.main import main; main()", "worker"]
    children = [
        subprocess.Popen(
            [*command, *child_argv(argv, gpu, base, index)],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu},
        )
        for index, gpu in enumerate(gpus)
    ]
    log.info("started %d workers, one per GPU %s", len(children), ",".join(gpus))

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max((abs(code) for code in codes), default=0)
