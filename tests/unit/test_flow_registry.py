"""Finding flows through entry points, and surviving broken ones."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest

from flowyard.core.errors import FlowNotFound
from flowyard.core.flow import Flow, FlowContext
from flowyard.flows.debug import AsyncSleep, Sleep
from flowyard.flows.image import Blur, Edges, Resize
from flowyard.flows.registry import ENTRY_POINT_GROUP, FlowRegistry, installed_flows, load_flows

BUILT_IN = ("debug.async_sleep", "debug.sleep", "image.blur", "image.edges", "image.resize")


class ParamsNotAModel(Flow):
    name = "x.params"
    Params = dict  # type: ignore[assignment]

    def run(self, ctx: FlowContext, params: object) -> None:
        """Never runs: the registry refuses the flow."""


class AnotherBlur(Blur):
    """A second package claiming ``image.blur``."""


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_built_in_flows_are_installed() -> None:
    registry = load_flows()
    assert set(BUILT_IN) <= set(registry.names())
    assert registry.get("image.blur") is Blur
    assert registry.get("image.edges") is Edges
    assert registry.get("image.resize") is Resize
    assert registry.get("debug.sleep") is Sleep
    assert registry.get("debug.async_sleep") is AsyncSleep
    assert not {name for name in registry.broken if name in BUILT_IN}


def test_installed_flows_are_loaded_once() -> None:
    assert load_flows() is load_flows() is installed_flows()


def test_names_are_sorted_and_describe_follows_them() -> None:
    registry = load_flows([entry_point(name, value) for name, value in _built_ins()[::-1]])
    assert registry.names() == BUILT_IN
    assert [info.name for info in registry.describe()] == list(BUILT_IN)
    assert "image.blur" in registry
    assert "image.nope" not in registry


def test_a_missing_module_is_broken_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    broken = entry_point("x.broken", "nonexistent_module_xyz:Thing")
    with caplog.at_level(logging.WARNING, logger="flowyard.flows.registry"):
        registry = load_flows([broken, entry_point("image.blur", "flowyard.flows.image:Blur")])
    assert registry.names() == ("image.blur",)
    reason = registry.broken["x.broken"]
    assert "nonexistent_module_xyz" in reason
    assert "ModuleNotFoundError" in reason
    assert "\n" not in reason
    assert "x.broken" in caplog.text


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("image.blurry", "flowyard.flows.image:Blur", "does not match Flow.name 'image.blur'"),
        ("x.notaflow", "flowyard.flows.image:BlurParams", "is not a Flow subclass"),
        ("x.function", "flowyard.flows.image:target_size", "is not a Flow subclass"),
        ("x.abstract", "flowyard.flows.image:ImageFlow", "is abstract"),
        ("x.attr", "flowyard.flows.image:NoSuchClass", "AttributeError"),
        ("x.params", f"{__name__}:ParamsNotAModel", "Params is not a pydantic model"),
    ],
)
def test_unusable_entry_points_are_broken(name: str, value: str, words: str) -> None:
    registry = load_flows([entry_point(name, value)])
    assert registry.flows == {}
    assert words in registry.broken[name]


def test_an_import_that_raises_anything_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: EntryPoint) -> object:
        raise RuntimeError("flow package crashed\nwith a long story")

    monkeypatch.setattr(EntryPoint, "load", explode)
    registry = load_flows([entry_point("x.crash", "crash:Flow")])
    assert registry.broken == {
        "x.crash": "cannot load crash:Flow: RuntimeError: flow package crashed"
    }


def test_a_second_flow_with_a_taken_name_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    first = entry_point("image.blur", "flowyard.flows.image:Blur")
    second = entry_point("image.blur", f"{__name__}:AnotherBlur")
    with caplog.at_level(logging.WARNING, logger="flowyard.flows.registry"):
        registry = load_flows([first, first, second])
    assert registry.flows == {"image.blur": Blur}
    assert registry.broken == {}
    assert len(caplog.records) == 1
    assert "installed twice" in caplog.text


def test_get_unknown_lists_installed_flows() -> None:
    registry = load_flows([entry_point(name, value) for name, value in _built_ins()])
    with pytest.raises(FlowNotFound) as caught:
        registry.get("image.sharpen")
    assert str(caught.value) == (
        "unknown flow 'image.sharpen'; installed flows: "
        "debug.async_sleep, debug.sleep, image.blur, image.edges, image.resize"
    )


def test_get_unknown_in_an_empty_registry() -> None:
    with pytest.raises(FlowNotFound, match=r"installed flows: \(none\)"):
        FlowRegistry().get("image.blur")


def _built_ins() -> list[tuple[str, str]]:
    return [
        ("debug.async_sleep", "flowyard.flows.debug:AsyncSleep"),
        ("debug.sleep", "flowyard.flows.debug:Sleep"),
        ("image.blur", "flowyard.flows.image:Blur"),
        ("image.edges", "flowyard.flows.image:Edges"),
        ("image.resize", "flowyard.flows.image:Resize"),
    ]
