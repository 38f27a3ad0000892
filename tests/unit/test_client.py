"""The typed client on its own: response models, the error table it shares with the server.

No server runs here: ``httpx.MockTransport`` answers as the routes do.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from httpx_sse import EventSource

from flowyard.core.errors import FlowyardError, Unauthenticated
from flowyard.core.events import TaskCreated
from flowyard.services.api.schemas import WorkerOut
from flowyard.services.api.status import STATUS
from flowyard.services.client import Client, error_from_response
from flowyard.services.client.streams import decode_events

SERVER = "http://flowyard.test"


@pytest.mark.parametrize(("kind", "status"), [(k, s) for k, s in STATUS if s < 500])
def test_every_error_the_server_answers_comes_back_as_its_type(
    kind: type[FlowyardError], status: int
) -> None:
    error = error_from_response(status, {"detail": "x", "field": None, "type": kind.__name__})
    assert type(error) is kind
    assert error.message == "x"


async def test_lists_decode_into_the_servers_models() -> None:
    worker = {
        "id": "w1", "name": "gpu-1", "host": "h", "flows": ["image.blur"], "concurrency": 1,
        "owner": None, "transport": "db", "started_at": "2026-03-01T12:00:00Z",
        "last_seen_at": "2026-03-01T12:00:05Z", "online": True,
    }  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"items": [worker]}))
    async with Client(SERVER, transport=transport) as api:
        workers = await api.list_workers()
    assert workers == [WorkerOut.model_validate(worker)]


async def test_an_answer_of_another_shape_is_said_to_be_the_servers() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"id": 3}))
    async with Client(SERVER, transport=transport) as api:
        with pytest.raises(FlowyardError, match=r"unexpected answer to GET .*/api/tasks/"):
            await api.get_task("3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e")


async def test_without_a_hook_a_401_keeps_the_servers_words() -> None:
    body = {"detail": "sign in first", "field": None, "type": "Unauthenticated"}
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json=body))
    async with Client(SERVER, transport=transport) as api:
        with pytest.raises(Unauthenticated, match=r"^sign in first$"):
            await api.me()


async def test_the_event_stream_skips_what_this_client_cannot_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A newer server's event type must not end an older client's stream."""
    known = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep")
    unknown = known.model_dump(mode="json") | {"type": "task.teleported"}
    body = f"data: {json.dumps(unknown)}\n\n: keep-alive\n\ndata: {known.to_json()}\n\n"

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    url = "http://flowyard/api/events/stream"
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        http.stream("GET", url) as response,
    ):
        events = [event async for event in decode_events(EventSource(response))]
    assert events == [known]
    assert "cannot read" in caplog.text
