"""Image flows in batches: same-size images share one torch pass, with the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowyard.core.errors import FlowFailed
from flowyard.core.flow import BatchItem, Flow
from flowyard.flows.image import Blur, Edges, Resize
from tests.support.flow_context import make_context


def _png(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = (rng.random((size[1], size[0], channels)) * 255).astype("uint8")
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode).save(path)
    return path


def _item(tmp_path: Path, name: str, flow: type[Flow], image: Path, **params: object) -> BatchItem:
    return BatchItem(make_context(tmp_path / name, image=image), flow.parse_params(params))


def _pixels(item: BatchItem) -> np.ndarray:
    return np.asarray(Image.open(item.ctx.output("output.png")))


@pytest.mark.parametrize(
    ("flow", "params"),
    [(Blur, {"radius": 1.5}), (Edges, {"threshold": 0.3}), (Edges, {}), (Resize, {"scale": 0.5})],
)
def test_a_batch_gives_each_image_what_it_gets_alone(
    tmp_path: Path, flow: type[Flow], params: dict[str, object]
) -> None:
    sources = [_png(tmp_path / f"in{i}.png", (20, 14), seed=i) for i in range(3)]
    sources.append(_png(tmp_path / "other.png", (9, 11), seed=9))  # a size of its own
    sources.append(_png(tmp_path / "alpha.png", (20, 14), seed=4, mode="RGBA"))
    batch = [_item(tmp_path, f"b{i}", flow, src, **params) for i, src in enumerate(sources)]
    assert flow().run_batch(batch) == [None] * len(batch)
    for i, src in enumerate(sources):
        alone = _item(tmp_path, f"a{i}", flow, src, **params)
        flow().run(alone.ctx, alone.params)
        assert np.array_equal(_pixels(batch[i]), _pixels(alone)), f"image {i}"


def test_a_broken_image_fails_only_its_own_task(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png", (8, 8), seed=1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    items = [_item(tmp_path, "g", Blur, good), _item(tmp_path, "x", Blur, broken)]
    outcomes = Blur().run_batch(items)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], FlowFailed)
    assert "not a PNG or JPEG" in outcomes[1].message
