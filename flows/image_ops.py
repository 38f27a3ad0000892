"""The image flows' pixel work: decoding, torch tensors, blur, Sobel, resize.

Kept apart from ``flows/image.py`` so that the flows' names, params schemas and
inputs can be read (by the server, which validates params) without importing
torch, numpy or Pillow: only a worker running one of these flows imports this.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from flowyard.core.errors import FlowFailed
from flowyard.flows import image as meta

if TYPE_CHECKING:
    from flowyard.flows.image import BlurParams, EdgesParams, ResizeParams

_PLAIN_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights Pillow's convert("L") uses


# --- decoding and encoding ---------------------------------------------------------------


def load_image(path: Path) -> Image.Image:
    """Decode a PNG/JPEG into L, LA, RGB or RGBA; refuse other files with a readable message."""
    try:
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            meta.check_pixels(img.width, img.height, "input 'image'")
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _plain_mode(img)
    except UnidentifiedImageError:
        raise FlowFailed(
            "input 'image' is not a PNG or JPEG image (cannot identify image file)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FlowFailed(
            f"input 'image' is too large (the limit is {meta.MAX_PIXELS // 1_000_000} megapixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FlowFailed(f"input 'image' could not be decoded ({_one_line(exc)})") from None


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


# --- blur --------------------------------------------------------------------------------


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


def blur(img: Image.Image, params: BlurParams, device: torch.device) -> Image.Image:
    return blur_batch([img], params, device)[0]


def blur_batch(
    imgs: list[Image.Image], params: BlurParams, device: torch.device
) -> list[Image.Image]:
    """Same size and mode: one ``(N, C, H, W)`` pass (conv2d blurs each sample alone)."""
    x = stack(imgs, device)
    n = color_channels(imgs[0].mode)
    blurred = gaussian_blur(x[:, :n], params.radius)
    return unstack(torch.cat([blurred, x[:, n:]], dim=1))


def stack(imgs: list[Image.Image], device: torch.device) -> torch.Tensor:
    return torch.cat([to_tensor(img, device) for img in imgs], dim=0)


def unstack(batch: torch.Tensor) -> list[Image.Image]:
    return [to_image(sample.unsqueeze(0)) for sample in batch]


# --- edges -------------------------------------------------------------------------------


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
    magnitude: torch.Tensor = torch.linalg.vector_norm(gradients, dim=1, keepdim=True)
    return magnitude


def normalise(magnitude: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Scale each image so its strongest edge is 255 (an edgeless image stays black)."""
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    unit = torch.where(peak > 0, magnitude / peak.clamp_min(1e-12), torch.zeros_like(magnitude))
    if threshold is not None:
        unit = torch.where(peak > 0, (unit >= threshold).to(unit.dtype), unit)
    return unit * 255.0


def edges(img: Image.Image, params: EdgesParams, device: torch.device) -> Image.Image:
    return edges_batch([img], params, device)[0]


def edges_batch(
    imgs: list[Image.Image], params: EdgesParams, device: torch.device
) -> list[Image.Image]:
    grey = grayscale(stack(imgs, device), color_channels(imgs[0].mode))
    return unstack(normalise(sobel_magnitude(grey), params.threshold))


# --- resize ------------------------------------------------------------------------------


def resize(img: Image.Image, params: ResizeParams, device: torch.device) -> Image.Image:
    return resize_batch([img], params, device)[0]


def resize_batch(
    imgs: list[Image.Image], params: ResizeParams, device: torch.device
) -> list[Image.Image]:
    img = imgs[0]
    width, height = meta.target_size(img.width, img.height, params)
    meta.check_pixels(width, height, "the resized image")
    shrinking = width < img.width or height < img.height
    resized = F.interpolate(
        stack(imgs, device),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=shrinking,
    )
    return unstack(resized)
