"""Image flows: gaussian blur, Sobel edges and resize, done in torch on ``ctx.device``.

Each reads one PNG or JPEG, works on a float tensor of shape ``(1, C, H, W)``
with values 0..255 and writes one PNG. Pillow only decodes and encodes, so the
same code runs on CPU and CUDA.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import FlowFailed
from core.flow import Flow, FlowContext, InputSpec, OutputSpec, check_cancelled

MAX_PIXELS = 64_000_000
"""Largest input (and resize output) in pixels: 64 megapixels, ~1 GB as float RGBA."""

MAX_SIDE = 16384

IMAGE_INPUT = InputSpec(
    name="image",
    media=("image/png", "image/jpeg"),
    description="The picture to process (PNG or JPEG, at most 64 megapixels).",
)
PNG_OUTPUT = OutputSpec(name="output.png", media_type="image/png", description="The result.")

_PLAIN_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights Pillow's convert("L") uses


# --- decoding and encoding ---------------------------------------------------------------


def load_image(path: Path) -> Image.Image:
    """Decode a PNG/JPEG into L, LA, RGB or RGBA; refuse other files with a readable message."""
    try:
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            _check_pixels(img.width, img.height, "input 'image'")
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _plain_mode(img)
    except UnidentifiedImageError:
        raise FlowFailed(
            "input 'image' is not a PNG or JPEG image (cannot identify image file)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FlowFailed(
            f"input 'image' is too large (the limit is {MAX_PIXELS // 1_000_000} megapixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FlowFailed(f"input 'image' could not be decoded ({_one_line(exc)})") from None


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise FlowFailed(
            f"{what} is too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
            f"the limit is {MAX_PIXELS // 1_000_000}"
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plain_mode(img: Image.Image) -> Image.Image:
    """Reduce Pillow's many modes to four so the tensor code needs no special cases.

    Palette and CMYK become RGB(A), bilevel becomes L, 16-bit grey is scaled (Pillow's own
    conversion would clip it to white), and a transparency key becomes an alpha channel.
    """
    if img.mode in _PLAIN_MODES and "transparency" not in img.info:
        return img
    if img.mode.startswith("I"):
        grey = np.array(img, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8))
    alpha = img.has_transparency_data
    if img.mode in ("1", "L", "LA"):
        return img.convert("LA" if alpha else "L")
    return img.convert("RGBA" if alpha else "RGB")


def to_tensor(img: Image.Image, device: torch.device) -> torch.Tensor:
    """``(1, C, H, W)`` float32 in 0..255; moved to the device as uint8 to copy 4x less."""
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
    if pixels.ndim == 2:
        pixels = pixels.unsqueeze(-1)
    return pixels.to(device).permute(2, 0, 1).unsqueeze(0).to(torch.float32)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Inverse of ``to_tensor``: the channel count picks L, LA, RGB or RGBA."""
    pixels = tensor.squeeze(0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    array = pixels.contiguous().cpu().numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def color_channels(mode: str) -> int:
    return 1 if mode in ("L", "LA") else 3


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# --- the shared run ----------------------------------------------------------------------


class ImageFlow(Flow):
    """One image in, one PNG out; subclasses only transform the picture."""

    inputs: ClassVar[tuple[InputSpec, ...]] = (IMAGE_INPUT,)
    outputs: ClassVar[tuple[OutputSpec, ...]] = (PNG_OUTPUT,)
    verb: ClassVar[str] = "processed"

    def run(self, ctx: FlowContext, params: Any) -> None:
        device = torch.device(ctx.device)
        img = load_image(ctx.input("image"))
        ctx.progress(0.1, f"loaded {img.width}x{img.height} {img.mode} image")
        check_cancelled(ctx)
        with torch.inference_mode():
            result = self.process(img, params, device)
        ctx.progress(0.8, f"{self.verb} to {result.width}x{result.height} {result.mode}")
        check_cancelled(ctx)
        save_png(result, ctx.output(PNG_OUTPUT.name))
        ctx.progress(1.0, f"saved {PNG_OUTPUT.name}")

    @abstractmethod
    def process(self, img: Image.Image, params: Any, device: torch.device) -> Image.Image:
        """Transform a decoded L/LA/RGB/RGBA image."""


# --- blur --------------------------------------------------------------------------------


class BlurParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    radius: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Gaussian sigma in pixels; the kernel reaches 3 sigma each way.",
    )


def gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """1-D kernel of size ``2 * ceil(3 * sigma) + 1`` summing to 1."""
    half = math.ceil(3 * sigma)
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _pad(x: torch.Tensor, amount: int, dim: int, mode: str) -> torch.Tensor:
    pads = (amount, amount, 0, 0) if dim == -1 else (0, 0, amount, amount)
    return F.pad(x, pads, mode=mode)


def reflect_pad(x: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    """Reflect padding of any width along ``dim`` (-1 or -2).

    torch refuses a reflection wider than the image, yet a big radius on a small picture
    needs one; reflecting repeatedly gives the same mirrored, periodic extension.
    """
    if x.shape[dim] == 1:
        return _pad(x, amount, dim, "replicate")
    while amount > 0:
        step = min(amount, x.shape[dim] - 1)
        x = _pad(x, step, dim, "reflect")
        amount -= step
    return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of every channel of ``(1, C, H, W)``: two 1-D passes, not one 2-D."""
    channels = x.shape[1]
    kernel = gaussian_kernel(sigma, x.device)
    half = kernel.numel() // 2
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(reflect_pad(x, half, -1), horizontal, groups=channels)
    return F.conv2d(reflect_pad(x, half, -2), vertical, groups=channels)


class Blur(ImageFlow):
    name = "image.blur"
    version = "1"
    description = "Gaussian blur (separable convolution); alpha is kept as it is."
    Params = BlurParams
    verb = "blurred"

    def process(self, img: Image.Image, params: BlurParams, device: torch.device) -> Image.Image:
        x = to_tensor(img, device)
        n = color_channels(img.mode)
        blurred = gaussian_blur(x[:, :n], params.radius)
        return to_image(torch.cat([blurred, x[:, n:]], dim=1))


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


def grayscale(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``(1, 1, H, W)`` luma of the colour channels; alpha is ignored."""
    if channels == 1:
        return x[:, :1]
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * weights).sum(dim=1, keepdim=True)


def sobel_magnitude(grey: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of ``(1, 1, H, W)``; replicated borders keep flat edges at 0."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=grey.device)
    weight = torch.stack([kx, kx.T]).unsqueeze(1)
    gradients = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), weight)
    return torch.linalg.vector_norm(gradients, dim=1, keepdim=True)


def normalise(magnitude: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Scale so the strongest edge is 255 (an edgeless image stays black)."""
    peak = magnitude.amax()
    if peak <= 0:
        return torch.zeros_like(magnitude)
    unit = magnitude / peak
    if threshold is not None:
        unit = (unit >= threshold).to(unit.dtype)
    return unit * 255.0


class Edges(ImageFlow):
    name = "image.edges"
    version = "1"
    description = "Sobel edge magnitude as a grayscale PNG, optionally thresholded to black/white."
    Params = EdgesParams
    verb = "found edges"

    def process(self, img: Image.Image, params: EdgesParams, device: torch.device) -> Image.Image:
        grey = grayscale(to_tensor(img, device), color_channels(img.mode))
        return to_image(normalise(sobel_magnitude(grey), params.threshold))


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
        width, height = target_size(img.width, img.height, params)
        _check_pixels(width, height, "the resized image")
        shrinking = width < img.width or height < img.height
        resized = F.interpolate(
            to_tensor(img, device),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=shrinking,
        )
        return to_image(resized)
