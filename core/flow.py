"""What a flow is, and what it may ask of the worker that runs it.

A flow is a class with a name, a version, a pydantic ``Params`` model, declared
inputs and outputs, and a synchronous ``run``. Workers call ``run`` in a thread
so torch never blocks the event loop; the ``FlowContext`` is the flow's only
window on the outside: progress, cancellation, files, scratch space, device.
Flows import ``core`` and torch, nothing else of ours, so the same flow runs
unchanged in every mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import FlowCancelled, InvalidInput


class InputSpec(BaseModel):
    """One input file a flow expects; ``media`` lists accepted kinds, e.g. ``image``."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    media: tuple[str, ...] = ()
    required: bool = True


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    media_type: str = "application/octet-stream"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlowContext(Protocol):
    """The worker's side of a running flow."""

    @property
    def device(self) -> str:
        """``cuda`` when a GPU is present (and allowed), else ``cpu``."""
        ...

    @property
    def scratch(self) -> Path:
        """A private folder removed after the attempt."""
        ...

    def input(self, name: str) -> Path:
        """The local path of a declared input; raises ``InvalidInput`` when absent."""
        ...

    def output(self, name: str) -> Path:
        """Where to write a declared output."""
        ...

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress 0..1; cheap to call often (the worker throttles)."""
        ...

    def cancelled(self) -> bool:
        """True once cancellation was requested; long loops should check it."""
        ...


class Flow(ABC):
    """Base class of every flow. Subclasses set the class variables and ``run``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[InputSpec, ...]] = ()
    outputs: ClassVar[tuple[OutputSpec, ...]] = ()

    @abstractmethod
    def run(self, ctx: FlowContext, params: Any) -> None:
        """Do the work; write each output to ``ctx.output(name)``; raise to fail."""

    @classmethod
    def parse_params(cls, raw: dict[str, Any]) -> BaseModel:
        """Validate params, naming the bad field in the error."""
        try:
            return cls.Params.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(["params", *(str(p) for p in first["loc"])])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"{field}: {message}", field=field) from None

    @classmethod
    def describe(cls) -> FlowInfo:
        return FlowInfo(
            name=cls.name,
            version=cls.version,
            description=cls.description,
            params_schema=cls.Params.model_json_schema(),
            inputs=cls.inputs,
            outputs=cls.outputs,
        )


class FlowInfo(BaseModel):
    """What the API and CLI show of a flow."""

    name: str
    version: str
    description: str
    params_schema: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()


def check_cancelled(ctx: FlowContext) -> None:
    """Raise ``FlowCancelled`` when cancellation was requested; call between steps."""
    if ctx.cancelled():
        raise FlowCancelled()
