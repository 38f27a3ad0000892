"""A real, in-memory ``FlowContext`` for running flows in tests without a worker."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from flowyard.core.errors import InvalidInput


@dataclass
class LocalFlowContext:
    """Inputs from a dict, outputs into a folder, progress kept in ``progress_calls``.

    ``cancel()`` may be called from any thread (a ``threading.Timer`` in tests); the
    flow sees it on its next ``cancelled()``.
    """

    scratch: Path
    outputs: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    progress_calls: list[tuple[float, str]] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)

    def input(self, name: str) -> Path:
        try:
            return self.inputs[name]
        except KeyError:
            raise InvalidInput(f"missing input {name!r}", field=f"inputs.{name}") from None

    def output(self, name: str) -> Path:
        self.outputs.mkdir(parents=True, exist_ok=True)
        return self.outputs / name

    def progress(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self.progress_calls.append((fraction, message))

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def fractions(self) -> list[float]:
        with self._lock:
            return [fraction for fraction, _ in self.progress_calls]


def make_context(tmp_path: Path, device: str = "cpu", **inputs: Path) -> LocalFlowContext:
    """A context whose scratch and outputs live under ``tmp_path``."""
    return LocalFlowContext(
        scratch=tmp_path / "scratch",
        inputs=dict(inputs),
        outputs=tmp_path / "outputs",
        device=device,
    )
