"""The HTTP edge in process: every hand-made input that used to be a 500 is a 4xx naming
its field, types are strict, params has one limit, and the OpenAPI document says so.

The PostgreSQL cases run in server mode, where NUL in text is a driver error
unless the edge refuses it first.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from flowyard.core.settings import Settings
from flowyard.services.api.app import create_app
from flowyard.services.runtime import Runtime
from tests.support.auth import ADMIN_AUTH, ADMIN_NAME, ADMIN_PASSWORD

pytestmark = pytest.mark.timeout(120)

PARAMS_LIMIT = 4000
NO_SUCH = "00000000-0000-4000-8000-000000000000"


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    runtime = await Runtime.open(settings)
    try:
        app = create_app(runtime.settings, runtime)
        app.state.runtime = runtime  # no lifespan under ASGITransport: nothing runs behind
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://flowyard", auth=ADMIN_AUTH
        ) as client:
            yield client
    finally:
        await runtime.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Default mode on SQLite, no workers: tasks stay queued."""
    settings = Settings(data_dir=tmp_path / "data", workers=0, max_params_bytes=PARAMS_LIMIT)
    async for c in _client(settings):
        yield c


@pytest.fixture
async def pg_client(tmp_path: Path, pg_uri: str) -> AsyncIterator[httpx.AsyncClient]:
    """Server mode on PostgreSQL, signed in as the test admin."""
    settings = Settings(
        mode="server",
        database_uri=pg_uri,
        data_dir=tmp_path / "data",
        admin_password=SecretStr(ADMIN_PASSWORD),
    )
    async for c in _client(settings):
        yield c


def _task_dirs(tmp_path: Path) -> set[str]:
    root = tmp_path / "data" / "files"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _error(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["field"] == field, body
    assert body["detail"].startswith(field), body
    return body


def _form(params: str, **extra: str) -> dict[str, Any]:
    """A multipart request (a dummy file part forces multipart encoding)."""
    return {
        "data": {"flow": "debug.sleep", "params": params, **extra},
        "files": {"unused": ("unused.txt", b"-", "text/plain")},
    }


# ------------------------------------------------------------------------ 500s


async def test_out_of_range_integers_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    """Every integer query parameter in the document is bounded, and past it is a 422."""
    spec = (await client.get("/openapi.json")).json()
    checked = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if param["in"] != "query" or param["schema"].get("type") != "integer":
                    continue
                assert param["schema"].get("maximum", 2**63) <= 2**31 - 1, (path, param)
                concrete = path.replace("{task_id}", NO_SUCH).replace("{webhook_id}", NO_SUCH)
                for value in (2**63, param["schema"]["maximum"] + 1, -(2**63) - 1):
                    response = await client.request(
                        method, concrete, params={param["name"]: str(value)}
                    )
                    _error(response, 422, param["name"])
                checked.append((method, path, param["name"]))
    assert ("get", "/api/tasks", "offset") in checked


async def test_a_file_name_too_long_is_refused_before_anything_is_written(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    before = _task_dirs(tmp_path)
    response = await client.post(
        "/api/tasks",
        data={"flow": "image.blur"},
        files={"inputs": ("a." + "x" * 300, b"\x89PNG", "image/png")},
    )
    body = _error(response, 422, "inputs")
    assert "file name too long" in body["detail"]
    assert _task_dirs(tmp_path) == before


async def test_a_long_name_is_cut_but_never_hidden(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/tasks",
        data={"flow": "image.blur"},
        files={"inputs": ("a." + "x" * 150, b"\x89PNG", "image/png")},
    )
    assert response.status_code == 201, response.text
    [stored] = response.json()["inputs"]
    assert not stored["name"].startswith(".")
    assert len(stored["name"]) <= 120


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ('{"fail": "\\ud800"}', "params", "not valid JSON"),  # a lone surrogate
        ("[" * 1000 + "]" * 1000, "params", "not valid JSON"),  # nested 1,000 deep
        ('{"a": ' * 1000 + "1" + "}" * 1000, "params", "not valid JSON"),
        ('{"seconds": NaN}', "params", "not valid JSON"),
        ('{"seconds": 1e999}', "params.seconds", "finite"),
        ("[1]", "params", "JSON object"),
    ],
)
async def test_bad_multipart_params_are_422(
    client: httpx.AsyncClient, params: str, field: str, words: str
) -> None:
    body = _error(await client.post("/api/tasks", **_form(params)), 422, field)
    assert words in body["detail"]


async def test_json_bodies_nested_deep_are_422(client: httpx.AsyncClient) -> None:
    nested = '{"flow": "debug.sleep", "params": {"a": ' + "[" * 1000 + "]" * 1000 + "}}"
    response = await client.post(
        "/api/tasks", content=nested, headers={"content-type": "application/json"}
    )
    _error(response, 422, "body")


async def test_a_webhook_host_no_resolver_can_encode_is_422(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: getaddrinfo raises UnicodeError (not OSError) past 63 characters."""
    for host in ("0" * 1000, "a" * 64 + ".example.com"):
        response = await client.post("/api/webhooks", json={"url": f"https://{host}/hook"})
        body = _error(response, 422, "url")
        assert "not a valid host name" in body["detail"]


# --------------------------------------------------------------- strict types


@pytest.mark.parametrize("priority", [True, "٣", "3", 3.5, None])
async def test_priority_must_be_an_integer_in_json(
    client: httpx.AsyncClient, priority: object
) -> None:
    response = await client.post("/api/tasks", json={"flow": "debug.sleep", "priority": priority})
    _error(response, 422, "priority")


@pytest.mark.parametrize("priority", ["٣", "true", "1_0", "3.5", "+", " 3 4"])
async def test_priority_must_be_ascii_digits_in_a_form(
    client: httpx.AsyncClient, priority: str
) -> None:
    response = await client.post("/api/tasks", **_form("{}", priority=priority))
    _error(response, 422, "priority")


@pytest.mark.parametrize(("json_value", "form_value"), [(-7, "-7"), (-7.0, "-7.0")])
async def test_integers_in_both_forms_still_work(
    client: httpx.AsyncClient, json_value: float, form_value: str
) -> None:
    """JSON Schema's integer: -7.0 is one (the fuzzer sends it), as OpenAPI documents it."""
    by_json = await client.post("/api/tasks", json={"flow": "debug.sleep", "priority": json_value})
    assert by_json.status_code == 201, by_json.text
    by_form = await client.post("/api/tasks", **_form("{}", priority=form_value))
    assert by_form.status_code == 201, by_form.text
    assert by_json.json()["priority"] == by_form.json()["priority"] == -7


@pytest.mark.parametrize(
    "content_type",
    ["application/jsonx", "multipart/form-datax; boundary=x", "text/json", "text/plain"],
)
async def test_look_alike_content_types_are_415(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        "/api/tasks", content=b'{"flow": "debug.sleep"}', headers={"content-type": content_type}
    )
    _error(response, 415, "content-type")


async def test_other_bodies_are_strict_too(client: httpx.AsyncClient) -> None:
    disabled = await client.patch(f"/api/users/{ADMIN_NAME}", json={"disabled": "yes"})
    _error(disabled, 422, "disabled")
    token = await client.post("/api/me/tokens", json={"name": "t", "expires_days": "5"})
    _error(token, 422, "expires_days")


# ------------------------------------------------------------------ params limit


async def test_one_params_limit_for_json_and_multipart(client: httpx.AsyncClient) -> None:
    """The same params, measured the same way (compact JSON), under both content types."""
    fits = {"fail": "x" * (PARAMS_LIMIT - 20)}
    over = {"fail": "x" * (PARAMS_LIMIT + 1)}
    assert (
        await client.post("/api/tasks", json={"flow": "debug.sleep", "params": fits})
    ).is_success
    assert (await client.post("/api/tasks", **_form(json.dumps(fits)))).is_success
    by_json = await client.post("/api/tasks", json={"flow": "debug.sleep", "params": over})
    by_form = await client.post("/api/tasks", **_form(json.dumps(over)))
    for response in (by_json, by_form):
        body = _error(response, 413, "params")
        assert body["type"] == "ParamsTooLarge"
        assert str(PARAMS_LIMIT) in body["detail"]


async def test_a_huge_form_field_is_413_params(client: httpx.AsyncClient) -> None:
    huge = json.dumps({"fail": "x" * (2 * 1024 * 1024)})
    body = _error(await client.post("/api/tasks", **_form(huge)), 413, "params")
    assert body["type"] == "ParamsTooLarge"


async def test_a_json_body_over_the_limit_is_413_while_it_streams(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"flow": "debug.sleep", "params": {"fail": "'
        while sent < 50 * 1024 * 1024:
            sent += 65536
            yield b"x" * 65536

    response = await client.post(
        "/api/tasks", content=endless(), headers={"content-type": "application/json"}
    )
    _error(response, 413, "body")
    assert sent < 2 * 1024 * 1024, "the body was read on past the limit"


# ------------------------------------------------------------------- NUL on PG


@pytest.mark.postgres
async def test_nul_in_any_text_is_422_on_postgresql(pg_client: httpx.AsyncClient) -> None:
    cases: list[tuple[httpx.Response, str]] = [
        (
            await pg_client.post(
                "/api/tasks", json={"flow": "debug.sleep", "params": {"fail": "a\x00b"}}
            ),
            "params.fail",
        ),
        (await pg_client.post("/api/tasks", json={"flow": "debug\x00.sleep"}), "flow"),
        (await pg_client.post("/api/tasks", **_form('{"fail": "a\\u0000b"}')), "params.fail"),
        (
            await pg_client.post(
                "/api/tasks", data={"flow": "debug.sleep\x00"}, files={"u": ("u", b"-")}
            ),
            "flow",
        ),
        (await pg_client.post("/api/webhooks", json={"url": "https://e.example/\x00"}), "url"),
        (
            await pg_client.post(
                "/api/users", json={"name": "eve\x00", "password": "long-Secret-99"}
            ),
            "name",
        ),
        (await pg_client.get("/api/tasks", params={"flow": "a\x00"}), "flow"),
        (await pg_client.get("/api/tasks", params={"owner": "\x00"}), "owner"),
        (await pg_client.get("/api/me/tokens/x%00y"), "path"),
    ]
    for response, field in cases:
        _error(response, 422, field)
    odd = await pg_client.get("/api/tasks", auth=httpx.BasicAuth("ad\x00min", "x"))
    assert odd.status_code == 401, odd.text
    assert (await pg_client.get("/api/health")).status_code == 200


# --------------------------------------------------------------------- OpenAPI


async def test_the_openapi_document_describes_errors_and_bodies(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert set(schemas["Error"]["properties"]) == {"detail", "field", "type"}
    assert "HTTPValidationError" not in schemas
    error_ref = {"$ref": "#/components/schemas/Error"}
    operations = [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) > 25
    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        expected = {"422", "503"} | ({"401", "429"} if path != "/api/health" else set())
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"413", "415"}
        assert expected <= set(responses), (where, sorted(responses))
        for status, response in responses.items():
            if status[0] in "45":
                assert response["content"] == {"application/json": {"schema": error_ref}}, (
                    where,
                    status,
                )
    create = spec["paths"]["/api/tasks"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"]["properties"]["priority"]["type"] == "integer"
    form = create["multipart/form-data"]["schema"]["properties"]
    assert {"flow", "params", "priority", "owner", "inputs"} <= set(form)
    assert form["inputs"]["items"] == {"type": "string", "format": "binary"}
    assert "409" in spec["paths"]["/api/tasks/{task_id}/cancel"]["post"]["responses"]
    assert "409" in spec["paths"]["/api/users"]["post"]["responses"]


async def test_a_405_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: Starlette named only the first route's method (one per method)."""
    response = await client.options("/api/tasks")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    item = await client.request("TRACE", f"/api/tasks/{NO_SUCH}")
    assert item.status_code == 405
    assert set(item.headers["allow"].split(", ")) >= {"GET", "HEAD", "DELETE", "PATCH"}
    assert item.json()["type"] == "HTTPError"
