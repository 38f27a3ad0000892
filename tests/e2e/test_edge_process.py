"""The HTTP edge and the process, against real ``flowyard serve`` processes.

A huge chunked body costs the server nothing; SIGTERM with live event streams
open stops it promptly and without a traceback; a second server on the same
data folder refuses before it touches the first one's tasks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.harness import FLOWYARD, ServeProcess, wait_for_state

pytestmark = pytest.mark.e2e

BODY_BYTES = 64 * 1024 * 1024
RSS_GROWTH_LIMIT = 100 * 1024 * 1024


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path / "data", workers=1).start()
    try:
        yield proc
    finally:
        proc.stop()


class PeakRss:
    """Samples a process's RSS every 10 ms in a thread: the peak, not the end state."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _chunked_post(port: int, path: str, total: int) -> tuple[int, dict[str, object], int]:
    """POST ``total`` bytes chunked on a raw socket while reading the answer as it comes.

    Returns the status, the JSON body and how many bytes got out before the server
    answered and closed.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    sent = 0
    frame_data = b'{"flow": "debug.sleep", "params": {"fail": "' + b"x" * (65536 - 45)
    frame = b"%x\r\n" % len(frame_data) + frame_data + b"\r\n"

    def send() -> None:
        nonlocal sent
        try:
            while sent < total:
                sock.sendall(frame)
                sent += len(frame_data)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what we want
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    try:
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(body) >= length:
                    break
            data = sock.recv(65536)
            if not data:
                break
            received += data
    finally:
        sender.join(30)
        sock.close()
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), sent


def test_a_huge_chunked_json_body_is_refused_while_rss_stays_flat(serve: ServeProcess) -> None:
    assert serve.proc is not None
    with PeakRss(serve.proc.pid) as rss:
        status, body, sent = _chunked_post(serve.port, "/api/tasks", BODY_BYTES)
    assert status == 413, body
    assert body["type"] == "RequestTooLarge"
    assert body["field"] == "body"
    assert sent < BODY_BYTES, "the server read the whole body before refusing it"
    growth = rss.peak - rss.start
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB"
    assert httpx.get(f"{serve.url}/api/health", timeout=5).status_code == 200


def _listen(url: str, subscribed: threading.Event, ended: threading.Event) -> None:
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=60)) as client,
            client.stream("GET", f"{url}/api/events/stream") as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith(": subscribed"):
                    subscribed.set()
    except httpx.HTTPError:
        pass
    ended.set()


def test_sigterm_with_live_streams_stops_promptly_and_cleanly(serve: ServeProcess) -> None:
    """The web UI's stream and ``flowyard events tail`` are open while the server stops."""
    assert serve.proc is not None
    subscribed, ended = threading.Event(), threading.Event()
    listener = threading.Thread(target=_listen, args=(serve.url, subscribed, ended), daemon=True)
    listener.start()
    assert subscribed.wait(10)
    tail = subprocess.Popen(
        [str(FLOWYARD), "events", "tail", "--server", serve.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{serve.url}/api/health").json()["live_subscribers"] < 2:
            assert time.monotonic() < deadline, "flowyard events tail never subscribed"
            time.sleep(0.1)
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(15)
        took = time.monotonic() - started
    finally:
        tail.terminate()
        tail.wait(10)
    log = serve.log_tail(400)
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises SIGTERM once it has stopped
    assert took < 2.5, f"stopping took {took:.1f}s\n{log}"
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log
    assert ended.wait(5), "the live stream was not ended by the server"


def test_a_second_server_on_the_same_data_folder_refuses(serve: ServeProcess) -> None:
    assert serve.proc is not None
    with httpx.Client(base_url=serve.url, timeout=10) as client:
        created = client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 60, "steps": 600}}
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        running = wait_for_state(client, task_id, {"running"})
        assert running["attempt"] == 1
        # the same port too, as in the report: the old server got as far as binding it
        result = subprocess.run(
            [str(FLOWYARD), "serve", "--port", str(serve.port), "--data-dir", str(serve.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "80"},
        )
        assert result.returncode != 0
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert f"pid {serve.proc.pid}" in lines[0]
        assert "in use" in lines[0]
        task = client.get(f"/api/tasks/{task_id}").json()
        assert task["state"] == "running"
        assert task["attempt"] == 1
        types = [e["type"] for e in client.get(f"/api/tasks/{task_id}/events").json()["items"]]
        assert "task.requeued" not in types, types
        assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
        done = wait_for_state(client, task_id, {"cancelled", "succeeded", "failed"})
        assert done["attempt"] == 1
    serve.kill()  # kill -9: the kernel drops the lock, so the folder is free again
    serve.start()
    assert httpx.get(f"{serve.url}/api/health", timeout=5).status_code == 200
