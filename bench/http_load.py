"""A lean HTTP/1.1 load client: one keep-alive connection, one request at a time.

The benchmarks' create phases run their clients in the same 2-core machine as
the server. httpx spends about 1.8 ms of CPU per POST, as much as the server's
create itself, so it took half the machine from the server it measured. This
client writes the request bytes and reads the status line, the headers and a
``Content-Length`` body (what uvicorn sends for JSON), and nothing more: about a
tenth of that. For load only; a response it cannot read is an error, never a
guess.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class HttpLoadError(RuntimeError):
    """A response this client does not read (no Content-Length, or a closed connection)."""


class KeepAliveClient:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL with a host is needed, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def post_json(self, path: str, body: Any) -> tuple[int, bytes]:
        """The status and the body of one ``POST`` of ``body`` as JSON."""
        if self._reader is None or self._writer is None:
            raise HttpLoadError("not connected: use the client with async with")
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self._writer.write(head.encode() + payload)
        try:
            status_line = await self._reader.readuntil(b"\r\n")
            headers = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise HttpLoadError("the server closed the connection") from exc
        length = None
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise HttpLoadError(f"a response without Content-Length: {headers[:200]!r}")
        return int(status_line.split(b" ", 2)[1]), await self._reader.readexactly(length)
