"""Image flows: gaussian blur, Sobel edges and resize, done in torch on ``ctx.device``.

Each reads one PNG or JPEG, works on a float tensor of shape ``(1, C, H, W)``
with values 0..255 and writes one PNG. Pillow only decodes and encodes, so the
same code runs on CPU and CUDA.

This module holds what the server needs (names, params, inputs, outputs) and
imports neither torch nor numpy nor Pillow: the pixel work is in
``flows/image_ops.py``, imported by ``run`` in the worker that runs the flow.
A server in server mode then validates params without loading torch.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowyard.core.errors import FlowCancelled, FlowFailed, InvalidInput
from flowyard.core.flow import BatchItem, Flow, FlowContext, InputSpec, OutputSpec, check_cancelled

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_PIXELS = 64_000_000
"""Largest input (and resize output) in pixels: 64 megapixels, ~1 GB as float RGBA."""

MAX_SIDE = 16384

IMAGE_INPUT = InputSpec(
    name="image",
    media=("image/png", "image/jpeg"),
    description="The picture to process (PNG or JPEG, at most 64 megapixels).",
)
PNG_OUTPUT = OutputSpec(name="output.png", media_type="image/png", description="The result.")


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse a picture over ``MAX_PIXELS`` (read at call time, so tests may lower it)."""
    if width * height > MAX_PIXELS:
        raise FlowFailed(
            f"{what} is too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
            f"the limit is {MAX_PIXELS // 1_000_000}"
        )


# --- the shared run ----------------------------------------------------------------------


class ImageFlow(Flow):
    """One image in, one PNG out; subclasses only transform the picture."""

    inputs: ClassVar[tuple[InputSpec, ...]] = (IMAGE_INPUT,)
    outputs: ClassVar[tuple[OutputSpec, ...]] = (PNG_OUTPUT,)
    verb: ClassVar[str] = "processed"
    batch_size: ClassVar[int] = 16
    batch_window: ClassVar[float] = 0.01

    def run(self, ctx: FlowContext, params: Any) -> None:
        outcome = self.run_batch([BatchItem(ctx, params)])[0]
        if outcome is not None:
            raise outcome

    def run_batch(self, items: Sequence[BatchItem]) -> list[BaseException | None]:
        """Images of one size, mode and params go through torch as one ``(N, C, H, W)``."""
        torch, image_ops = _heavy(self.name)
        outcomes: list[BaseException | None] = [None] * len(items)
        groups: dict[tuple[object, ...], list[tuple[int, Image.Image]]] = {}
        for i, item in enumerate(items):
            try:
                img = image_ops.load_image(item.ctx.input("image"))
                item.ctx.progress(0.1, f"loaded {img.width}x{img.height} {img.mode} image")
                check_cancelled(item.ctx)
            except (FlowFailed, FlowCancelled, InvalidInput) as exc:
                outcomes[i] = exc
                continue
            key = (img.size, img.mode, item.params.model_dump_json(), item.ctx.device)
            groups.setdefault(key, []).append((i, img))
        for members in groups.values():
            first = items[members[0][0]]
            with torch.inference_mode():
                results = self.process_batch(
                    [img for _, img in members], first.params, torch.device(first.ctx.device)
                )
            for (i, _), result in zip(members, results, strict=True):
                ctx = items[i].ctx
                try:
                    ctx.progress(
                        0.8, f"{self.verb} to {result.width}x{result.height} {result.mode}"
                    )
                    check_cancelled(ctx)
                    image_ops.save_png(result, ctx.output(PNG_OUTPUT.name))
                    ctx.progress(1.0, f"saved {PNG_OUTPUT.name}")
                except Exception as exc:  # noqa: BLE001 - one item's failure is its own
                    outcomes[i] = exc
        return outcomes

    def process_batch(
        self, imgs: list[Image.Image], params: Any, device: torch.device
    ) -> list[Image.Image]:
        """Same-size, same-mode images with the same params; by default one by one."""
        return [self.process(img, params, device) for img in imgs]

    @abstractmethod
    def process(self, img: Image.Image, params: Any, device: torch.device) -> Image.Image:
        """Transform a decoded L/LA/RGB/RGBA image."""


def _heavy(flow: str) -> tuple[Any, Any]:
    """torch and the pixel code, imported where a flow runs (the server never does)."""
    try:
        import torch

        from flowyard.flows import image_ops
    except ImportError as exc:
        raise FlowFailed(
            f"{flow} needs torch, numpy and Pillow on this worker "
            f"(pip install 'flowyard[flows]'): {exc}"
        ) from None
    return torch, image_ops


# --- blur --------------------------------------------------------------------------------


class BlurParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    radius: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Gaussian sigma in pixels; the kernel reaches 3 sigma each way.",
    )


class Blur(ImageFlow):
    name = "image.blur"
    version = "1"
    description = "Gaussian blur (separable convolution); alpha is kept as it is."
    Params = BlurParams
    verb = "blurred"

    def process(self, img: Image.Image, params: BlurParams, device: torch.device) -> Image.Image:
        from flowyard.flows.image_ops import blur

        return blur(img, params, device)

    def process_batch(
        self, imgs: list[Image.Image], params: BlurParams, device: torch.device
    ) -> list[Image.Image]:
        from flowyard.flows.image_ops import blur_batch

        return blur_batch(imgs, params, device)


# --- edges -------------------------------------------------------------------------------


class EdgesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="When set, pixels at or above this fraction of the strongest edge "
        "become white and the rest black; otherwise the magnitude is kept as grey levels.",
    )


class Edges(ImageFlow):
    name = "image.edges"
    version = "1"
    description = "Sobel edge magnitude as a grayscale PNG, optionally thresholded to black/white."
    Params = EdgesParams
    verb = "found edges"

    def process(self, img: Image.Image, params: EdgesParams, device: torch.device) -> Image.Image:
        from flowyard.flows.image_ops import edges

        return edges(img, params, device)

    def process_batch(
        self, imgs: list[Image.Image], params: EdgesParams, device: torch.device
    ) -> list[Image.Image]:
        from flowyard.flows.image_ops import edges_batch

        return edges_batch(imgs, params, device)


# --- resize ------------------------------------------------------------------------------


class ResizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIDE,
        description="Target width in pixels; alone, the height follows the aspect ratio.",
    )
    height: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIDE,
        description="Target height in pixels; alone, the width follows the aspect ratio.",
    )
    scale: float | None = Field(
        default=None,
        gt=0,
        le=16,
        description="Factor for both sides; excludes width and height.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        sized = self.width is not None or self.height is not None
        if self.scale is not None and sized:
            raise ValueError("give either scale or width/height, not both")
        if self.scale is None and not sized:
            raise ValueError("give scale or width or height")
        return self


def target_size(width: int, height: int, params: ResizeParams) -> tuple[int, int]:
    """``(width, height)`` of the result; a side that follows the aspect ratio is at least 1."""
    if params.scale is not None:
        return max(1, round(width * params.scale)), max(1, round(height * params.scale))
    wanted_width, wanted_height = params.width, params.height
    if wanted_width is not None and wanted_height is not None:
        return wanted_width, wanted_height
    if wanted_width is not None:
        return wanted_width, max(1, round(height * wanted_width / width))
    if wanted_height is not None:
        return max(1, round(width * wanted_height / height)), wanted_height
    raise FlowFailed("resize needs scale, width or height")  # the params validator prevents it


class Resize(ImageFlow):
    name = "image.resize"
    version = "1"
    description = "Bilinear resize (antialiased when shrinking) by scale or to a width/height."
    Params = ResizeParams
    verb = "resized"

    def process(self, img: Image.Image, params: ResizeParams, device: torch.device) -> Image.Image:
        from flowyard.flows.image_ops import resize

        return resize(img, params, device)

    def process_batch(
        self, imgs: list[Image.Image], params: ResizeParams, device: torch.device
    ) -> list[Image.Image]:
        from flowyard.flows.image_ops import resize_batch

        return resize_batch(imgs, params, device)
