"""A real HTTP receiver for webhook tests, on 127.0.0.1, in a thread of its own.

It speaks just enough HTTP/1.1 (``asyncio.start_server``) to take POSTs, records
every request, and answers what the test tells it: a fixed status, a delay (a
slow subscriber), or a function of the request. It can be stopped and started
again on the same port (a receiver that was down).

    receiver = WebhookReceiver().start()
    ...  # point a subscription at receiver.url
    receiver.wait_for(lambda got: len(got) >= 3, timeout=20)
    receiver.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.ports import free_port

MAX_BODY = 10 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Received], tuple[int, float]]
"""(status, seconds to wait before answering) for a request."""


class WebhookReceiver:
    def __init__(self, port: int | None = None, status: int = 200, delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.responder: Responder = lambda _request: (status, delay)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def start(self, timeout: float = 10.0) -> WebhookReceiver:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except OSError as exc:  # the port stayed taken: reported to start() below
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"receiver-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"receiver on port {self.port} did not start in {timeout}s")
        if failure:
            raise failure[0]
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        deadline = time.monotonic() + 5.0
        while True:  # the port may linger for a moment after a previous stop
            try:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        ready.set()
        async with self._server:
            await self._stopped.wait()
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket and every connection; the port stops accepting."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"receiver on port {self.port} did not stop in {timeout}s")
        self._thread = None
        self._loop = None

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str = ""
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.received
            if predicate(got):
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"receiver: timed out after {timeout:.0f}s waiting for {what or predicate}; "
                    f"got {len(got)} requests: {[r.body[:120] for r in got[-5:]]}"
                )
            time.sleep(0.05)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._handlers.add(current)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self._received.append(request)
                status, delay = self.responder(request)
                if delay:
                    await asyncio.sleep(delay)
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n"
                    "\r\nok".encode()
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            if current is not None:
                self._handlers.discard(current)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Received | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = min(int(headers.get("content-length", "0")), MAX_BODY)
        body = await reader.readexactly(length) if length else b""
        return Received(method, path, headers, body, time.monotonic())
