"""Fixtures for end-to-end tests against a real default-mode server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.harness import ServeProcess

UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("serve") / "data"
    proc = ServeProcess(
        data, env={"FLOWYARD_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}, workers=2
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(path)
    return path
