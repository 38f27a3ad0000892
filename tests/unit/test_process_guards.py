"""What keeps one server per data folder, ends live streams on shutdown, and sizes bodies."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from flowyard.adapters.files.lock import LOCK_NAME, DataDirLock
from flowyard.bus.inprocess import EventHub
from flowyard.core.errors import DataDirInUse
from flowyard.core.settings import MAX_INPUT_FILES, Settings


def test_a_second_lock_on_the_folder_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path, "http://127.0.0.1:8288")
    try:
        with pytest.raises(DataDirInUse) as caught:
            DataDirLock.acquire(tmp_path, "http://127.0.0.1:9999")
        message = caught.value.message
        assert f"pid {os.getpid()}" in message
        assert "http://127.0.0.1:8288" in message
        assert "\n" not in message
    finally:
        first.release()
    again = DataDirLock.acquire(tmp_path, "http://127.0.0.1:9999")  # released: free again
    again.release()
    assert (tmp_path / LOCK_NAME).exists()  # a stale file never blocks: only the flock counts


async def test_closing_the_hub_ends_every_live_subscription() -> None:
    hub = EventHub()

    async def drain() -> int:
        return len([event async for event in hub.subscribe()])

    readers = [asyncio.create_task(drain()) for _ in range(3)]
    await asyncio.sleep(0)
    assert hub.subscriber_count == 3
    hub.close()
    assert await asyncio.wait_for(asyncio.gather(*readers), 1) == [0, 0, 0]
    late = await asyncio.wait_for(drain(), 1)  # a stream opened while stopping ends at once
    assert late == 0
    assert hub.subscriber_count == 0


def test_body_limits_follow_the_settings() -> None:
    default = Settings()
    assert default.max_params_bytes == 1024 * 1024
    assert default.json_limit == default.max_params_bytes + 64 * 1024
    assert default.multipart_limit == (
        default.max_upload_bytes * MAX_INPUT_FILES + default.json_limit
    )
    tuned = Settings(max_request_bytes=10_000, max_params_bytes=2_000)
    assert tuned.multipart_limit == 10_000
    assert tuned.json_limit == 2_000 + 64 * 1024


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_MAX_PARAMS_BYTES", "4096")
    monkeypatch.setenv("FLOWYARD_MAX_REQUEST_BYTES", "1000000")
    settings = Settings()
    assert settings.max_params_bytes == 4096
    assert settings.multipart_limit == 1_000_000
