"""run_items: batched when a flow batches, one by one otherwise, and never losing an item."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from flowyard.core.errors import FlowFailed
from flowyard.core.flow import BatchItem, Flow, FlowContext, run_items
from tests.support.flow_context import make_context


class Recording(Flow):
    name: ClassVar[str] = "test.recording"
    batch_size: ClassVar[int] = 8
    calls: ClassVar[list[str]] = []
    batch_fails: ClassVar[bool] = False

    def run(self, ctx: FlowContext, params: Any) -> None:
        type(self).calls.append("run")
        if getattr(params, "bad", False):
            raise FlowFailed("bad item")

    def run_batch(self, items: Sequence[BatchItem]) -> list[BaseException | None]:
        type(self).calls.append(f"batch:{len(items)}")
        if type(self).batch_fails:
            raise RuntimeError("the whole batch broke")
        return [FlowFailed("bad item") if getattr(i.params, "bad", False) else None for i in items]


class Params:
    def __init__(self, bad: bool = False) -> None:
        self.bad = bad


def _items(tmp_path: Path, *bad: bool) -> list[BatchItem]:
    return [BatchItem(make_context(tmp_path / str(i)), Params(b)) for i, b in enumerate(bad)]


def test_a_batching_flow_runs_its_items_in_one_call(tmp_path: Path) -> None:
    Recording.calls, Recording.batch_fails = [], False
    outcomes = run_items(Recording(), _items(tmp_path, False, True, False))
    assert Recording.calls == ["batch:3"]
    assert outcomes[0] is None
    assert isinstance(outcomes[1], FlowFailed)
    assert outcomes[2] is None


def test_a_batch_that_raises_falls_back_to_one_by_one(tmp_path: Path) -> None:
    Recording.calls, Recording.batch_fails = [], True
    outcomes = run_items(Recording(), _items(tmp_path, False, True))
    assert Recording.calls == ["batch:2", "run", "run"]
    assert outcomes[0] is None
    assert isinstance(outcomes[1], FlowFailed)


def test_a_single_item_or_a_non_batching_flow_runs_alone(tmp_path: Path) -> None:
    Recording.calls, Recording.batch_fails = [], False
    assert run_items(Recording(), _items(tmp_path, False)) == [None]
    assert Recording.calls == ["run"]
