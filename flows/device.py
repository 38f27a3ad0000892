"""Which torch device flows get: the only place outside a flow that touches torch."""

from __future__ import annotations

import functools

from core.errors import ConfigError


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
