"""The HTTP edge middleware on raw ASGI: limits while the body streams, text checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from flowyard.services.api.edge import EdgeGuard

JSON_LIMIT = 1000
MULTIPART_LIMIT = 5000


class Recorder:
    """An ASGI app that reads the whole body and answers 200 with its length."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        more = True
        while more:
            message = await receive()
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(self.body)).encode()})


class Client:
    """Feeds a body in chunks and records how much of it the middleware pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pulled >= len(self.chunks):
            return {"type": "http.disconnect"}
        chunk = self.chunks[self.pulled]
        self.pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": self.pulled < len(self.chunks)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def scope(headers: dict[str, str], path: str = "/api/tasks", query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


async def call(headers: dict[str, str], chunks: list[bytes], **kw: Any) -> tuple[Client, Recorder]:
    app = Recorder()
    guard = EdgeGuard(app, json_limit=JSON_LIMIT, multipart_limit=MULTIPART_LIMIT)
    client = Client(chunks)
    await guard(scope(headers, **kw), client.receive, client.send)
    return client, app


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    headers = {"content-type": "application/json", "content-length": "10000000000"}
    client, app = await call(headers, [b"{}"])
    assert client.status == 413
    assert client.pulled == 0
    assert not app.called
    body = client.json()
    assert body["field"] == "body"
    assert body["type"] == "RequestTooLarge"


@pytest.mark.parametrize(
    ("content_type", "limit"),
    [("application/json", JSON_LIMIT), ("multipart/form-data; boundary=x", MULTIPART_LIMIT)],
)
async def test_chunked_body_is_cut_off_at_the_limit(content_type: str, limit: int) -> None:
    chunks = [b"x" * 100] * 1000  # 100 kB in 100-byte chunks, no Content-Length
    headers = {"content-type": content_type, "transfer-encoding": "chunked"}
    client, _ = await call(headers, chunks)
    assert client.status == 413
    assert client.json()["type"] == "RequestTooLarge"
    assert client.pulled == limit // 100 + 1  # not one chunk more than needed to know
    assert (b"connection", b"close") in client.sent[0]["headers"]


async def test_a_body_within_the_limit_reaches_the_app_unchanged() -> None:
    body = json.dumps({"flow": "debug.sleep", "params": {"text": "ünïcode"}}).encode()
    headers = {"content-type": "application/json", "transfer-encoding": "chunked"}
    client, app = await call(headers, [body[:10], body[10:]])
    assert client.status == 200
    assert app.body == body


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"params": {"note": "a\\u0000b"}}', "params.note", "NUL"),
        (b'{"flow": "x", "params": {"a\\u0000": 1}}', "params.a\x00", "NUL"),
        (b'{"url": "http://h/\\u0000"}', "url", "NUL"),
        (b'{"params": {"x": NaN}}', "body", "not valid JSON"),
        (b'{"params": {"x": 1e999}}', "params.x", "finite"),
        (b'{"params": {"x": "\\ud800"}}', "body", "not valid JSON"),
        (b"[" * 300 + b"]" * 300, "body", "recursion"),
        (b'{"events": ["a", "b\\u0000"]}', "events.1", "NUL"),
    ],
)
async def test_json_bodies_are_strict_json_without_nul(body: bytes, field: str, words: str) -> None:
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    client, app = await call(headers, [body])
    assert client.status == 422
    error = client.json()
    assert error["field"] == field
    assert words in error["detail"]
    assert not app.called


@pytest.mark.parametrize("content_type", ["application/jsonx", "text/plain", "json", ""])
async def test_unreadable_content_types_are_415(content_type: str) -> None:
    headers = {"content-type": content_type, "content-length": "2"}
    client, app = await call(headers, [b"{}"])
    assert client.status == 415
    assert client.json()["field"] == "content-type"
    assert not app.called


async def test_problem_json_and_charset_are_json() -> None:
    for content_type in ("application/merge-patch+json", "Application/JSON; charset=utf-8"):
        client, app = await call({"content-type": content_type, "content-length": "2"}, [b"{}"])
        assert client.status == 200, content_type
        assert app.body == b"{}"


async def test_nul_in_query_or_path_names_the_field() -> None:
    client, _ = await call({}, [], query=b"flow=image%00blur&limit=5")
    assert client.status == 422
    assert client.json()["field"] == "flow"
    client, _ = await call({}, [], path="/api/users/ad\x00min")
    assert client.status == 422
    assert client.json()["field"] == "path"


async def test_requests_without_a_body_pass_untouched() -> None:
    client, app = await call({"content-type": "application/jsonx"}, [b""], query=b"limit=5")
    assert client.status == 200
    assert app.called
