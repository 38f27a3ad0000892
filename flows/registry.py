"""Which flows are installed: every ``flowyard.flows`` entry point, built-in or third-party.

A flow whose optional dependencies are absent (``Flow.requires``) stays known,
so a slim server still validates its params, but is not ``runnable``: workers
do not ask for it, and the API shows why.

A broken third-party package must not take the server or a worker down with it, so
each entry point that cannot be used is logged and kept in ``broken`` with a reason
that the API and CLI can show, and everything else still loads.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from pydantic import BaseModel

from flowyard.core.errors import FlowNotFound
from flowyard.core.flow import Flow, FlowInfo

ENTRY_POINT_GROUP = "flowyard.flows"

log = logging.getLogger(__name__)


@dataclass
class FlowRegistry:
    """Flows by name, plus the entry points that failed to load and why."""

    flows: dict[str, type[Flow]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> type[Flow]:
        try:
            return self.flows[name]
        except KeyError:
            installed = ", ".join(self.names()) or "(none)"
            raise FlowNotFound(f"unknown flow {name!r}; installed flows: {installed}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.flows))

    def runnable(self) -> tuple[str, ...]:
        """The flows this process can run: those whose ``requires`` are all importable."""
        return tuple(
            name for name in self.names() if missing_requirements(self.flows[name]) is None
        )

    def describe(self) -> list[FlowInfo]:
        return [
            self.flows[name]
            .describe()
            .model_copy(update={"unavailable": missing_requirements(self.flows[name])})
            for name in self.names()
        ]

    def __contains__(self, name: object) -> bool:
        return name in self.flows


def load_flows(entry_points: Iterable[EntryPoint] | None = None) -> FlowRegistry:
    """Load the given entry points, or the installed ones (cached) when None."""
    if entry_points is None:
        return installed_flows()
    registry = FlowRegistry()
    for entry_point in entry_points:
        _add(registry, entry_point)
    return registry


@functools.cache
def installed_flows() -> FlowRegistry:
    """The installed flows, loaded once per process; ``cache_clear()`` rescans."""
    return load_flows(entry_points(group=ENTRY_POINT_GROUP))


def _add(registry: FlowRegistry, entry_point: EntryPoint) -> None:
    name = entry_point.name
    flow = _load(entry_point)
    if isinstance(flow, str):
        registry.broken[name] = flow
        log.warning("flow entry point %r (%s) is broken: %s", name, entry_point.value, flow)
        return
    known = registry.flows.get(name)
    if known is not None and known is not flow:
        log.warning(
            "flow %r is installed twice; keeping %s, ignoring %s",
            name,
            _qualname(known),
            entry_point.value,
        )
        return
    registry.flows[name] = flow


def _load(entry_point: EntryPoint) -> type[Flow] | str:
    """Import and check one entry point: the flow class, or why it cannot be used."""
    where = entry_point.value
    try:
        obj = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - third-party import code may raise anything
        return f"cannot load {where}: {_describe(exc)}"
    if not (inspect.isclass(obj) and issubclass(obj, Flow)):
        return f"{where} is not a Flow subclass"
    if inspect.isabstract(obj):
        return f"{where} is abstract (run is not implemented)"
    declared = getattr(obj, "name", None)
    if declared != entry_point.name:
        return f"entry point name {entry_point.name!r} does not match Flow.name {declared!r}"
    return _why_not_describable(obj, where) or obj


def _why_not_describable(flow: type[Flow], where: str) -> str | None:
    """Fail at load rather than on the first ``GET /flows``: Params must give a JSON schema."""
    params: object = flow.Params  # a plugin's class attribute: not what its annotation says
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        return f"{where}: Params is not a pydantic model"
    try:
        flow.describe()
    except Exception as exc:  # noqa: BLE001 - a third-party schema may raise anything
        return f"{where}: cannot describe the flow: {_describe(exc)}"
    return None


def missing_requirements(flow: type[Flow]) -> str | None:
    """Why ``flow`` cannot run here (a module it needs is not installed), without importing it."""
    absent = [module for module in flow.requires if importlib.util.find_spec(module) is None]
    if not absent:
        return None
    install = f"pip install 'flowyard[{flow.extra}]'" if flow.extra else "install them"
    return f"needs {', '.join(absent)}, not installed here: {install}"


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _qualname(flow: type[Flow]) -> str:
    return f"{flow.__module__}:{flow.__qualname__}"
