"""Restart safety: kill -9 the all-in-one server and start it again on the same data."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ServeProcess, wait_for_state

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


def test_kill_9_loses_nothing(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", workers=1).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            finished = client.post(
                "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}}
            ).json()
            wait_for_state(client, finished["id"], {"succeeded"})
            running = client.post(
                "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 1.5, "steps": 15}}
            ).json()
            wait_for_state(client, running["id"], {"running"})
            queued = [
                client.post(
                    "/api/tasks",
                    json={"flow": "debug.sleep", "params": {"seconds": 0.1}, "priority": -1},
                ).json()
                for _ in range(3)
            ]
            assert client.get(f"/api/tasks/{queued[0]['id']}").json()["state"] == "queued"
        server.kill()

        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            again = wait_for_state(client, running["id"], {"succeeded", "failed"}, timeout=30)
            assert again["state"] == "succeeded"
            assert again["attempt"] == 2
            types = [
                e["type"] for e in client.get(f"/api/tasks/{running['id']}/events").json()["items"]
            ]
            assert types.count("task.requeued") == 1
            assert types.count("task.done") == 1
            for task in queued:
                done = wait_for_state(client, task["id"], {"succeeded", "failed"}, timeout=30)
                assert done["state"] == "succeeded"
                assert done["attempt"] == 1
            kept = client.get(f"/api/tasks/{finished['id']}").json()
            assert kept["state"] == "succeeded"
            assert kept["attempt"] == 1
    finally:
        server.stop()


def test_graceful_stop_and_restart_keeps_queue(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", workers=0).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            task = client.post(
                "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}}
            ).json()
        # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells the truth
        assert server.stop() in (0, -15)
        server.workers = 1
        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert wait_for_state(client, task["id"], {"succeeded"})["attempt"] == 1
    finally:
        server.stop()
