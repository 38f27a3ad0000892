"""The built-in flows, run for real on small pictures made here."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import flowyard.flows.debug
import flowyard.flows.image
from flowyard.core.errors import FlowCancelled, FlowFailed, InvalidInput
from flowyard.core.flow import Flow
from flowyard.flows.debug import Sleep
from flowyard.flows.image import Blur, Edges, Resize, target_size
from flowyard.flows.image_ops import gaussian_kernel, reflect_pad
from tests.support.flow_context import LocalFlowContext, make_context

WIDTH, HEIGHT = 64, 48

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


def run_flow(flow: type[Flow], ctx: LocalFlowContext, **params: Any) -> None:
    flow().run(ctx, flow.parse_params(params))


def save(path: Path, pixels: np.ndarray | Image.Image, **options: Any) -> Path:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    img.save(path, **options)
    return path


def noise(channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def step_edge() -> np.ndarray:
    """Black left half, white right half: one vertical edge between x=31 and x=32."""
    pixels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    pixels[:, WIDTH // 2 :] = 255
    return pixels


def result(ctx: LocalFlowContext) -> Image.Image:
    with Image.open(ctx.outputs / "output.png") as img:
        assert img.format == "PNG"
        img.load()
        return img


def run_on(
    tmp_path: Path, flow: type[Flow], pixels: np.ndarray | Image.Image, **params: Any
) -> Image.Image:
    ctx = make_context(tmp_path, image=save(tmp_path / "in.png", pixels))
    run_flow(flow, ctx, **params)
    return result(ctx)


def fake_png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size without holding the pixels: only the header is read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- blur --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_blur_keeps_size_and_smooths_noise(tmp_path: Path, device: str) -> None:
    pixels = noise()
    ctx = make_context(tmp_path, device=device, image=save(tmp_path / "in.png", pixels))
    run_flow(Blur, ctx, radius=2)
    out = result(ctx)
    assert (out.size, out.mode) == ((WIDTH, HEIGHT), "RGB")
    blurred = np.asarray(out, dtype=np.float64)
    assert blurred.var() < pixels.astype(np.float64).var() / 10
    assert abs(blurred.mean() - pixels.mean()) < 5


def test_blur_keeps_a_uniform_image_uniform(tmp_path: Path) -> None:
    out = run_on(tmp_path, Blur, np.full((HEIGHT, WIDTH, 3), (10, 120, 250), dtype=np.uint8))
    assert (np.asarray(out) == (10, 120, 250)).all()


def test_blur_passes_alpha_through_unchanged(tmp_path: Path) -> None:
    pixels = noise(channels=4)
    out = run_on(tmp_path, Blur, pixels, radius=3)
    assert out.mode == "RGBA"
    assert (np.asarray(out)[..., 3] == pixels[..., 3]).all()
    assert np.asarray(out)[..., :3].var() < pixels[..., :3].var() / 10


def test_blur_keeps_grayscale(tmp_path: Path) -> None:
    out = run_on(tmp_path, Blur, noise(channels=1))
    assert (out.mode, out.size) == ("L", (WIDTH, HEIGHT))


@pytest.mark.parametrize("size", [(WIDTH, HEIGHT), (1, 1), (3, 1)])
def test_blur_radius_wider_than_the_image(tmp_path: Path, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    out = np.asarray(run_on(tmp_path, Blur, pixels, radius=100), dtype=np.float64)
    assert out.shape == pixels.shape
    assert out.max() - out.min() <= 2  # a huge sigma leaves about the mean everywhere
    assert abs(out.mean() - mirrored_mean(pixels)) < 2


def mirrored_mean(pixels: np.ndarray) -> float:
    """Mean of the endless reflection of ``pixels``: the border rows and columns count half."""

    def weights(n: int) -> np.ndarray:
        if n == 1:
            return np.ones(1)
        w = np.ones(n)
        w[[0, -1]] = 0.5
        return w / w.sum()

    rows, cols = pixels.shape
    return float(weights(rows) @ pixels.astype(np.float64) @ weights(cols))


def test_gaussian_kernel_size_and_sum() -> None:
    kernel = gaussian_kernel(2.0, torch.device("cpu"))
    assert kernel.numel() == 2 * 6 + 1
    assert kernel.sum().item() == pytest.approx(1.0)
    assert kernel.argmax().item() == 6


def test_reflect_pad_wider_than_the_tensor_mirrors() -> None:
    x = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    padded = reflect_pad(x, 5, -1)
    assert padded.flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]


# --- edges -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_edges_finds_a_vertical_step(tmp_path: Path, device: str) -> None:
    ctx = make_context(tmp_path, device=device, image=save(tmp_path / "in.png", step_edge()))
    run_flow(Edges, ctx)
    out = result(ctx)
    assert (out.mode, out.size) == ("L", (WIDTH, HEIGHT))
    magnitude = np.asarray(out)
    assert (magnitude[:, WIDTH // 2 - 1 : WIDTH // 2 + 1] == 255).all()
    assert (magnitude[:, : WIDTH // 2 - 2] == 0).all()
    assert (magnitude[:, WIDTH // 2 + 2 :] == 0).all()


def test_edges_threshold_binarises(tmp_path: Path) -> None:
    blurred_step = np.asarray(run_on(tmp_path, Blur, step_edge(), radius=3))
    (tmp_path / "b").mkdir()
    out = np.asarray(run_on(tmp_path / "b", Edges, blurred_step, threshold=0.5))
    assert set(np.unique(out).tolist()) == {0, 255}
    assert (out[:, WIDTH // 2] == 255).all()
    assert (out[:, :10] == 0).all()


def test_edges_of_a_flat_image_are_black(tmp_path: Path) -> None:
    out = run_on(tmp_path, Edges, np.full((HEIGHT, WIDTH), 77, dtype=np.uint8), threshold=0.0)
    assert (np.asarray(out) == 0).all()


def test_edges_of_rgba_give_grayscale(tmp_path: Path) -> None:
    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., 3] = 200
    rgba[:, WIDTH // 2 :, :3] = (255, 0, 0)
    out = run_on(tmp_path, Edges, rgba)
    assert out.mode == "L"
    assert np.asarray(out)[:, WIDTH // 2].min() == 255


# --- resize ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"scale": 0.5}, (32, 24)),
        ({"scale": 2}, (128, 96)),
        ({"width": 32}, (32, 24)),
        ({"height": 96}, (128, 96)),
        ({"width": 10, "height": 40}, (10, 40)),
        ({"scale": 0.001}, (1, 1)),
    ],
)
def test_resize_sizes(tmp_path: Path, params: dict[str, Any], size: tuple[int, int]) -> None:
    out = run_on(tmp_path, Resize, noise(), **params)
    assert (out.size, out.mode) == (size, "RGB")


@pytest.mark.parametrize("device", DEVICES)
def test_resize_keeps_colour_and_alpha(tmp_path: Path, device: str) -> None:
    pixels = np.full((HEIGHT, WIDTH, 4), (200, 100, 50, 128), dtype=np.uint8)
    ctx = make_context(tmp_path, device=device, image=save(tmp_path / "in.png", pixels))
    run_flow(Resize, ctx, scale=0.25)
    out = result(ctx)
    assert (out.size, out.mode) == ((16, 12), "RGBA")
    assert (np.asarray(out) == (200, 100, 50, 128)).all()


def test_resize_down_averages_noise(tmp_path: Path) -> None:
    """Antialiasing: shrinking by 8 averages blocks instead of sampling single pixels."""
    out = np.asarray(run_on(tmp_path, Resize, noise(channels=1), scale=0.125), dtype=np.float64)
    assert out.std() < 30


def test_resize_refuses_a_huge_result(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, image=save(tmp_path / "in.png", noise()))
    with pytest.raises(FlowFailed, match="resized image is too large"):
        run_flow(Resize, ctx, width=16384, height=16384)


def test_target_size_keeps_aspect_ratio() -> None:
    params = Resize.parse_params({"height": 3})
    assert target_size(1000, 10, params) == (300, 3)  # type: ignore[arg-type]


# --- params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flow", "params", "field", "words"),
    [
        (Resize, {}, "params", "give scale or width or height"),
        (Resize, {"scale": 2, "width": 10}, "params", "not both"),
        (Resize, {"scale": 2, "height": 10}, "params", "not both"),
        (Resize, {"width": 0}, "params.width", "greater than or equal to 1"),
        (Resize, {"height": 20000}, "params.height", "less than or equal to 16384"),
        (Resize, {"scale": 0}, "params.scale", "greater than 0"),
        (Resize, {"scale": 17}, "params.scale", "less than or equal to 16"),
        (Resize, {"scale": 2, "mode": "nearest"}, "params.mode", "Extra inputs"),
        (Blur, {"radius": 0}, "params.radius", "greater than 0"),
        (Blur, {"radius": 101}, "params.radius", "less than or equal to 100"),
        (Blur, {"sigma": 1}, "params.sigma", "Extra inputs"),
        (Edges, {"threshold": 1.5}, "params.threshold", "less than or equal to 1"),
        (Sleep, {"steps": 0}, "params.steps", "greater than or equal to 1"),
        (Sleep, {"seconds": -1}, "params.seconds", "greater than or equal to 0"),
        (Sleep, {"seconds": 3601}, "params.seconds", "less than or equal to 3600"),
    ],
)
def test_bad_params_are_invalid_input(
    flow: type[Flow], params: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        flow.parse_params(params)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_default_params() -> None:
    assert Blur.parse_params({}).model_dump() == {"radius": 2.0}
    assert Edges.parse_params({}).model_dump() == {"threshold": None}
    assert Sleep.parse_params({}).model_dump() == {
        "seconds": 1.0,
        "steps": 10,
        "fail": None,
        "transient": None,
    }


@pytest.mark.parametrize("flow", [Blur, Edges, Resize, Sleep])
def test_every_param_is_described(flow: type[Flow]) -> None:
    info = flow.describe()
    assert info.name == flow.name
    assert info.version == "1"
    assert info.description
    fields = info.params_schema["properties"]
    assert fields
    assert all(spec.get("description") for spec in fields.values())
    assert info.params_schema["additionalProperties"] is False


@pytest.mark.parametrize("flow", [Blur, Edges, Resize])
def test_image_flows_declare_their_files(flow: type[Flow]) -> None:
    (source,) = flow.inputs
    (target,) = flow.outputs
    assert (source.name, source.media) == ("image", ("image/png", "image/jpeg"))
    assert (target.name, target.media_type) == ("output.png", "image/png")


# --- inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [Blur, Edges, Resize])
def test_a_non_image_fails_readably(tmp_path: Path, flow: type[Flow]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    ctx = make_context(tmp_path, image=text)
    with pytest.raises(FlowFailed) as caught:
        run_flow(flow, ctx, scale=2) if flow is Resize else run_flow(flow, ctx)
    assert str(caught.value) == (
        "input 'image' is not a PNG or JPEG image (cannot identify image file)"
    )
    assert not (ctx.outputs / "output.png").exists()


def test_a_gif_is_refused(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, image=save(tmp_path / "in.gif", noise(channels=1)))
    with pytest.raises(FlowFailed, match="not a PNG or JPEG image"):
        run_flow(Blur, ctx)


def test_a_truncated_png_fails_readably(tmp_path: Path) -> None:
    whole = save(tmp_path / "whole.png", noise()).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FlowFailed, match=r"^input 'image' could not be decoded \(.*truncated"):
        run_flow(Blur, make_context(tmp_path, image=cut))


@pytest.mark.parametrize(
    "size",
    [
        (9000, 8000),  # over our limit, under Pillow's
        (10000, 10000),  # Pillow warns (an error under pytest)
        (20000, 20000),  # Pillow refuses
    ],
)
def test_a_huge_image_is_refused(tmp_path: Path, size: tuple[int, int]) -> None:
    huge = tmp_path / "huge.png"
    huge.write_bytes(fake_png_header(*size))
    with pytest.raises(FlowFailed, match=r"^input 'image' is too large"):
        run_flow(Blur, make_context(tmp_path, image=huge))


def test_the_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flowyard.flows.image, "MAX_PIXELS", WIDTH * HEIGHT - 1)
    ctx = make_context(tmp_path, image=save(tmp_path / "in.png", noise()))
    with pytest.raises(FlowFailed, match=r"64x48 is 0\.0 megapixels"):
        run_flow(Blur, ctx)


def test_jpeg_input(tmp_path: Path) -> None:
    jpeg = save(tmp_path / "in.jpg", noise(), format="JPEG", quality=90)
    ctx = make_context(tmp_path, image=jpeg)
    run_flow(Resize, ctx, width=32)
    assert (result(ctx).size, result(ctx).mode) == ((32, 24), "RGB")


def test_grayscale_jpeg_stays_grayscale(tmp_path: Path) -> None:
    jpeg = save(tmp_path / "in.jpg", noise(channels=1), format="JPEG")
    ctx = make_context(tmp_path, image=jpeg)
    run_flow(Blur, ctx)
    assert result(ctx).mode == "L"


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    jpeg = save(tmp_path / "in.jpg", Image.new("CMYK", (WIDTH, HEIGHT), (0, 0, 0, 0)))
    ctx = make_context(tmp_path, image=jpeg)
    run_flow(Blur, ctx)
    out = result(ctx)
    assert out.mode == "RGB"
    assert np.asarray(out).min() >= 250  # no ink is white


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(noise())
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = save(tmp_path / "in.jpg", img, format="JPEG", exif=exif)
    ctx = make_context(tmp_path, image=jpeg)
    run_flow(Blur, ctx)
    assert result(ctx).size == (HEIGHT, WIDTH)


def test_palette_png_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    img = Image.fromarray(noise(channels=1)).convert("P")
    img.info["transparency"] = 0
    out = run_on(tmp_path, Blur, img)
    assert out.mode == "RGBA"


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    deep = Image.fromarray(np.full((HEIGHT, WIDTH), 40000, dtype=np.uint16))
    out = run_on(tmp_path, Blur, deep)
    assert out.mode == "L"
    assert (np.asarray(out) == round(40000 / 257)).all()


# --- progress and cancellation of image flows -------------------------------------------


def test_image_flow_reports_progress_to_one(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, image=save(tmp_path / "in.png", noise()))
    run_flow(Edges, ctx)
    assert ctx.fractions == sorted(ctx.fractions)
    assert len(ctx.fractions) >= 3
    assert ctx.fractions[-1] == 1.0
    assert ctx.progress_calls[0][1] == "loaded 64x48 RGB image"


def test_cancelled_image_flow_writes_nothing(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, image=save(tmp_path / "in.png", noise()))
    ctx.cancel()
    with pytest.raises(FlowCancelled):
        run_flow(Blur, ctx)
    assert not (ctx.outputs / "output.png").exists()


def test_missing_input_is_the_contexts_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="missing input 'image'"):
        run_flow(Blur, make_context(tmp_path))


# --- debug.sleep -------------------------------------------------------------------------


def test_sleep_reports_each_step(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    run_flow(Sleep, ctx, seconds=0.05, steps=5)
    assert ctx.fractions == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [message for _, message in ctx.progress_calls][-1] == "step 5/5"


def test_sleep_waits_about_the_time_asked(tmp_path: Path) -> None:
    started = time.monotonic()
    run_flow(Sleep, make_context(tmp_path), seconds=0.2, steps=3)
    assert 0.2 <= time.monotonic() - started < 1.0


def test_sleep_stops_promptly_when_cancelled(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    timer = threading.Timer(0.1, ctx.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(FlowCancelled):
            run_flow(Sleep, ctx, seconds=60, steps=1)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 0.4
    assert ctx.fractions == []


def test_sleep_cancelled_before_start_does_nothing(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    ctx.cancel()
    with pytest.raises(FlowCancelled):
        run_flow(Sleep, ctx, seconds=10)
    assert ctx.progress_calls == []


def test_sleep_zero_seconds_never_sleeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s")

    monkeypatch.setattr(flowyard.flows.debug.time, "sleep", no_sleep)
    ctx = make_context(tmp_path)
    started = time.monotonic()
    run_flow(Sleep, ctx, seconds=0, steps=1000)
    assert time.monotonic() - started < 0.5
    assert len(ctx.fractions) == 1000
    assert ctx.fractions[-1] == 1.0


def test_sleep_fail_raises_flow_failed_after_the_wait(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    with pytest.raises(FlowFailed, match=r"^boom$"):
        run_flow(Sleep, ctx, seconds=0, steps=2, fail="boom")
    assert ctx.fractions == [0.5, 1.0]
