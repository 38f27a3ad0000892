"""``flowyard worker --gpus``: one worker per device, each reporting its hardware."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from flowyard.core.errors import ConfigError
from flowyard.services.gpu_workers import child_argv, gpu_list
from tests.support.auth import ADMIN_AUTH
from tests.support.processes import ProcessGroup, wait_until


def test_gpu_lists() -> None:
    assert gpu_list("0,2") == ["0", "2"]
    assert gpu_list(" 1 ") == ["1"]
    assert gpu_list("all", count=lambda: 3) == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="no CUDA device"):
        gpu_list("all", count=lambda: 0)
    for bad in ("", "x", "0,0", "-1"):
        with pytest.raises(ConfigError, match="--gpus"):
            gpu_list(bad)


def test_children_get_their_own_name_and_no_gpus_option() -> None:
    argv = ["--db", "postgresql://h/db", "--gpus", "0,1", "--name", "box", "--concurrency=2"]
    assert child_argv(argv, "1", "box") == [
        "--db",
        "postgresql://h/db",
        "--concurrency=2",
        "--name",
        "box-gpu1",
    ]
    assert child_argv(["--gpus=all"], "0", "h") == ["--name", "h-gpu0"]
    ports = child_argv(["--metrics-port", "9100", "--gpus", "0,1"], "1", "h", index=1)
    assert ports == ["--metrics-port", "9101", "--name", "h-gpu1"]
    assert child_argv(["--metrics-port=9100"], "2", "h", index=2)[:2] == ["--metrics-port", "9102"]


@pytest.mark.postgres
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_one_worker_per_gpu_each_sees_only_its_device(
    pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    files = tmp_path / "files"
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(files)]
    )
    server.wait_healthy(60)
    parent = flowyard_processes.start_worker(
        ["--db", pg_uri, "--files", str(files), "--gpus", "0,1", "--name", "box"],
        {"FLOWYARD_DEVICE": "cpu"},  # no GPU here: the split is what is tested
        name="per-gpu",
    )
    with httpx.Client(base_url=server.url or "", auth=ADMIN_AUTH, timeout=10) as client:

        def both_listed() -> bool:
            names = {w["name"] for w in client.get("/api/workers").json()["items"]}
            return {"box-gpu0", "box-gpu1"} <= names

        wait_until(both_listed, 60, "both per-GPU workers", group=flowyard_processes)
        workers = {w["name"]: w for w in client.get("/api/workers").json()["items"]}
    for gpu in ("0", "1"):
        resources = workers[f"box-gpu{gpu}"]["resources"]
        assert resources["cuda_visible_devices"] == gpu
        assert resources["device"] == "cpu"
        assert resources["host_memory_bytes"] > 0
    assert parent.terminate() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_worker_reports_its_device() -> None:
    from flowyard.flows.device import device_resources

    resources = device_resources("cuda")
    assert resources["device_name"]
    assert isinstance(resources["device_memory_bytes"], int)
    assert resources["device_memory_bytes"] > 0
