"""Which torch device flows get: the only place outside a flow that touches torch."""

from __future__ import annotations

import functools
import os

from flowyard.core.errors import ConfigError


@functools.cache
def detect_device(preference: str = "auto") -> str:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    if preference == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device")
    return "cpu"


def device_resources(device: str) -> dict[str, str | int | None]:
    """What a worker reports of its hardware: device name and memory, host memory."""
    host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    info: dict[str, str | int | None] = {
        "device": device,
        "device_name": None,
        "device_memory_bytes": None,
        "host_memory_bytes": host_memory,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(0)
        info["device_name"] = props.name
        info["device_memory_bytes"] = int(props.total_memory)
    return info


def cuda_device_count() -> int:
    """GPUs torch can see (``flowyard worker --gpus all`` starts one worker per device)."""
    import torch

    return int(torch.cuda.device_count())
