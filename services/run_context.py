"""The ``FlowContext`` a worker hands to a flow running in a thread.

Flows call ``progress`` as often as they like from their thread; only the
latest value is kept, with the time of the first change since it was last
taken, and the worker's progress ticker takes it once that change is one
``progress_interval`` old. So the flow's thread never wakes the event loop for
progress. Cancellation is a ``threading.Event`` the worker sets
from the event loop (cancel request, lost lease, shutdown). The attempt's output and
scratch folders are made when the flow first asks for them.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from flowyard.core.errors import InvalidInput
from flowyard.core.ports import AttemptFiles
from flowyard.flows.device import detect_device


class RunContext:
    def __init__(self, files: AttemptFiles, device: str) -> None:
        self._files = files
        self._device = device
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._latest: tuple[float, str] | None = None
        self._since: float | None = None
        """Monotonic time of the first change not taken yet."""
        self.lease_lost = False

    @property
    def device(self) -> str:
        """``auto`` is resolved here, on first use in the flow's thread: asking torch about
        CUDA imports it, and a server whose flows never touch a device (or that is at
        rest) should not carry torch."""
        return detect_device(self._device)

    @property
    def scratch(self) -> Path:
        return self._folders().scratch

    def input(self, name: str) -> Path:
        try:
            return self._files.inputs[name]
        except KeyError:
            raise InvalidInput(f"inputs: missing input {name!r}", field="inputs") from None

    def output(self, name: str) -> Path:
        return self._folders().outputs / name

    def _folders(self) -> AttemptFiles:
        """The attempt's folders, made on the flow's first use (see ``AttemptFiles.made``)."""
        files = self._files
        with self._lock:
            if not files.made:
                if files.private is not None and not files.private.is_dir():
                    files.private.mkdir(mode=0o700, parents=True)
                for folder in (files.outputs, files.scratch):
                    shutil.rmtree(folder, ignore_errors=True)  # an earlier run of this attempt
                    folder.mkdir(parents=True)
                files.made = True
        return files

    def progress(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self._latest = (min(1.0, max(0.0, float(fraction))), message[:500])
            if self._since is None:
                self._since = time.monotonic()

    def take_progress(self, held: float = 0.0) -> tuple[float, str] | None:
        """The latest progress, once its first change is ``held`` seconds old (else None)."""
        with self._lock:
            if self._since is None or time.monotonic() - self._since < held:
                return None
            latest, self._latest, self._since = self._latest, None, None
        return latest

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
