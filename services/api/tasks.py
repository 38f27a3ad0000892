"""``/api/tasks``: create (multipart or JSON), list, show, cancel, retry, reprioritize, delete,
download, events."""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from flowyard.core.errors import InvalidInput, ParamsTooLarge, UnsupportedMediaType
from flowyard.core.events import ChainStep
from flowyard.core.identity import Principal
from flowyard.core.settings import MAX_INPUT_FILES
from flowyard.core.task import Task, TaskState
from flowyard.services.api.auth import Admin, Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.api.edge import MULTIPART, URLENCODED, check_text, is_json, media_type
from flowyard.services.api.edge import parse_json_object as parse_params_text
from flowyard.services.api.openapi import CREATE_TASK_BODY, FILE_RESPONSE
from flowyard.services.api.schemas import (
    MAX_INT,
    BatchOut,
    CreateBatch,
    CreateTask,
    PruneOut,
    TaskOut,
    TaskPage,
    UpdateTask,
)
from flowyard.services.runtime import Runtime
from flowyard.services.task_service import NewTask, Upload

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(principal)])
Rt = Annotated[Runtime, Depends(runtime)]

MAX_INPUTS = MAX_INPUT_FILES
CHUNK = 1024 * 1024
_ASCII_INTEGER = re.compile(r"-?[0-9]{1,10}(\.0+)?")  # "-86.0" is an integer, "٣" is not


@router.post(
    "",
    status_code=201,
    response_model=TaskOut,
    openapi_extra=CREATE_TASK_BODY,
    responses={
        200: {"model": TaskOut, "description": "with ?wait: the task finished within the wait"},
        202: {"model": TaskOut, "description": "with ?wait: the task is still queued or running"},
        409: {"description": "an Idempotency-Key used before for a different request"},
    },
)
async def create_task(
    request: Request,
    response: Response,
    rt: Rt,
    caller: Caller,
    wait: Annotated[
        float | None,
        Query(gt=0, description="seconds to wait for the task to finish (max_wait_seconds)"),
    ] = None,
    cancel_on_disconnect: Annotated[
        bool, Query(description="with wait: cancel the task if the client leaves before the end")
    ] = False,
) -> TaskOut:
    """Multipart (``flow``, ``params`` JSON string, ``priority``, files in ``inputs``) or JSON.

    The body's size was bounded as it streamed (``services/api/edge.py``); ``params``
    is held to ``max_params_bytes`` whichever content type carries it. With ``wait``
    the answer comes when the task finishes (200) or when the wait is over (202).
    """
    _check_wait(wait, cancel_on_disconnect, rt.settings.max_wait_seconds)
    task, fresh = await _create(request, rt, caller)
    if not fresh:
        response.status_code = 200  # an Idempotency-Key seen before: the original task
    if wait is None:
        return TaskOut.of(task)
    final = await rt.tasks.wait(
        task.id,
        caller,
        wait,
        rt.hub,
        gone=request.is_disconnected,
        cancel_on_gone=cancel_on_disconnect,
    )
    response.status_code = 200 if final.state.finished else 202
    return TaskOut.of(final)


def _one_key(header: str | None, field: str | None) -> str | None:
    """The header or the ``idempotency_key`` field; both must then agree."""
    if header is not None and field is not None and header != field:
        raise InvalidInput(
            "Idempotency-Key: the header and the idempotency_key field differ",
            field="Idempotency-Key",
        )
    return header if header is not None else field


def _check_wait(wait: float | None, cancel_on_disconnect: bool, limit: float) -> None:
    if wait is not None and (not math.isfinite(wait) or wait > limit):
        raise InvalidInput(
            f"wait: at most {limit:g} seconds (max_wait_seconds), got {wait:g}", field="wait"
        )
    if cancel_on_disconnect and wait is None:
        raise InvalidInput(
            "cancel_on_disconnect: only with wait (the client must stay for the task)",
            field="cancel_on_disconnect",
        )


async def _create(request: Request, rt: Runtime, caller: Principal) -> tuple[Task, bool]:
    header = request.headers.get("idempotency-key")
    media = media_type(request.headers.get("content-type"))
    limit = rt.settings.max_params_bytes
    if is_json(media):
        try:
            body = CreateTask.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        _check_params_size(body.params, limit)
        key = _one_key(header, body.idempotency_key)
        new = dataclasses.replace(_new_task(body, caller), idempotency_key=key)
        return await rt.tasks.create_keyed(new)
    if media in (MULTIPART, URLENCODED):
        # a text part may hold params with some whitespace; the exact check follows
        form_limits = {"max_files": MAX_INPUTS, "max_fields": 32, "max_part_size": limit + CHUNK}
        try:
            form = await request.form(**form_limits)
        except HTTPException as exc:  # starlette's form parser refuses with a plain 400
            raise _form_error(str(exc.detail), limit) from None
        try:
            new, files = _parse_form(form, caller, limit)
            key = _one_key(header, _text_field(form, "idempotency_key"))
            new = dataclasses.replace(new, idempotency_key=key)
            rt.tasks.validate(new, len(files))
            uploads = [Upload(f.filename or "", _chunks(f)) for f in files]
            return await rt.tasks.create_keyed(new, uploads)
        finally:
            await form.close()
    raise UnsupportedMediaType(
        "content-type: send multipart/form-data (with files), a urlencoded form or JSON",
        field="content-type",
    )


@router.post(
    "/batch",
    status_code=201,
    response_model=BatchOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": CreateBatch.model_json_schema(),
                    "example": {
                        "task": {"flow": "debug.sleep", "params": {"seconds": 0}},
                        "count": 2,
                    },
                }
            },
        }
    },
)
async def create_batch(request: Request, rt: Rt, caller: Caller) -> BatchOut:
    """Many tasks (JSON, no files) in one transaction: ``tasks`` or ``task`` with ``count``.

    One bad item and nothing is stored; the 422 names the item and field
    (``tasks[3].params.seconds``). At most ``max_batch_tasks`` tasks.
    """
    if not is_json(media_type(request.headers.get("content-type"))):
        raise UnsupportedMediaType(
            "content-type: a batch is JSON (files need one POST /api/tasks each)",
            field="content-type",
        )
    try:
        body = CreateBatch.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _batch_invalid(exc) from None
    limit = rt.settings.max_batch_tasks
    if (body.tasks is None) == (body.task is None):
        raise InvalidInput("tasks: give tasks (a list), or task with count", field="tasks")
    if body.task is not None:
        if body.count is None:
            raise InvalidInput("count: required with task", field="count")
        if body.count > limit:
            raise InvalidInput(
                f"count: {body.count} tasks, more than the limit of {limit} per batch "
                "(max_batch_tasks)",
                field="count",
            )
        specs = [body.task] * body.count
    else:
        if body.count is not None:
            raise InvalidInput("count: only with task, not with tasks", field="count")
        specs = body.tasks or []
    requests = []
    for index, spec in enumerate(specs):
        try:
            _check_params_size(spec.params, rt.settings.max_params_bytes)
        except InvalidInput as exc:
            message, field = f"tasks[{index}].{exc.message}", f"tasks[{index}].params"
            raise type(exc)(message, field=field) from None
        if spec.idempotency_key is not None:
            raise InvalidInput(
                f"tasks[{index}].idempotency_key: not taken in a batch (one key per create)",
                field=f"tasks[{index}].idempotency_key",
            )
        requests.append(_new_task(spec, caller))
    tasks = await rt.tasks.create_batch(requests, limit)
    return BatchOut(ids=[t.id for t in tasks], items=[TaskOut.of(t) for t in tasks])


def _new_task(body: CreateTask, caller: Principal) -> NewTask:
    return NewTask(
        body.flow,
        body.params,
        body.priority,
        caller.owner_for(body.owner),
        max_attempts=body.max_attempts,
        run_at=body.run_at,
        delay_seconds=body.delay_seconds,
        timeout_seconds=body.timeout_seconds,
        then=tuple(body.then),
    )


def _batch_invalid(exc: ValidationError) -> InvalidInput:
    """``tasks[3].params`` rather than pydantic's ``tasks.3.params``."""
    first = exc.errors()[0]
    field = ""
    for part in first["loc"]:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    field = field or "body"
    return InvalidInput(f"{field}: {first['msg']}", field=field)


@router.post("/prune", response_model=PruneOut)
async def prune_tasks(
    rt: Rt,
    caller: Admin,
    older_than_days: Annotated[float, Query(ge=0, le=100_000, description="finished before")],
    dry_run: Annotated[bool, Query(description="count only, remove nothing")] = False,
    events: Annotated[bool, Query(description="also events of removed tasks this old")] = False,
) -> PruneOut:
    """Admins: remove finished tasks (files, webhook deliveries) older than the given age."""
    done = await rt.pruner.prune(
        older_than_days, events_days=older_than_days if events else None, dry_run=dry_run
    )
    return PruneOut(
        dry_run=dry_run, tasks=len(done.tasks), deliveries=done.deliveries, events=done.events
    )


@router.api_route(
    "/batch", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
@router.api_route(
    "/prune", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def post_only() -> None:
    """405 for the other methods: without this ``/{task_id}`` takes them (a 422 on the id)."""
    raise HTTPException(405, "Method Not Allowed")


@router.get("", response_model=TaskPage)
async def list_tasks(
    rt: Rt,
    caller: Caller,
    state: TaskState | None = None,
    flow: str | None = None,
    owner: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> TaskPage:
    items = await rt.tasks.list(
        caller, state=state, flow=flow, owner=owner, limit=limit, offset=offset
    )
    return TaskPage(
        items=[TaskOut.of(t) for t in items],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(items) == limit else None,
    )


@router.get("/{task_id}", response_model=TaskOut)
async def get_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> TaskOut:
    out = TaskOut.of(await rt.tasks.get(task_id, caller))
    out.children = await rt.store.children(task_id)
    return out


@router.delete("/{task_id}", status_code=204)
async def delete_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> Response:
    await rt.tasks.delete(task_id, caller)
    return Response(status_code=204)


@router.post("/{task_id}/cancel", response_model=TaskOut)
async def cancel_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> TaskOut:
    return TaskOut.of(await rt.tasks.cancel(task_id, caller))


@router.patch("/{task_id}", response_model=TaskOut)
async def update_task(task_id: uuid.UUID, body: UpdateTask, rt: Rt, caller: Caller) -> TaskOut:
    """Change a queued task's priority; 409 once it was claimed or finished."""
    return TaskOut.of(await rt.tasks.set_priority(task_id, caller, body.priority))


@router.post("/{task_id}/retry", response_model=TaskOut)
async def retry_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> TaskOut:
    """Queue a failed or cancelled task again as a new attempt; 409 in any other state."""
    return TaskOut.of(await rt.tasks.retry(task_id, caller))


# Files are users' uploads: never sniffed into HTML, never run as a page of this origin.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


@router.get("/{task_id}/outputs/{name}", response_class=FileResponse, responses=FILE_RESPONSE)
async def download_output(task_id: uuid.UUID, name: str, rt: Rt, caller: Caller) -> FileResponse:
    task = await rt.tasks.get(task_id, caller)
    path, ref = rt.files.output_path(task, name)
    return FileResponse(path, media_type=ref.media_type, filename=ref.name, headers=FILE_HEADERS)


@router.get("/{task_id}/inputs/{name}", response_class=FileResponse, responses=FILE_RESPONSE)
async def download_input(task_id: uuid.UUID, name: str, rt: Rt, caller: Caller) -> FileResponse:
    """An input file as uploaded (the web UI previews images)."""
    task = await rt.tasks.get(task_id, caller)
    path, ref = rt.files.input_path(task, name)
    return FileResponse(path, media_type=ref.media_type, filename=ref.name, headers=FILE_HEADERS)


@router.get("/{task_id}/events")
async def task_events(
    task_id: uuid.UUID, rt: Rt, caller: Caller
) -> dict[str, list[dict[str, Any]]]:
    events = await rt.tasks.events(task_id, caller)
    return {"items": [e.model_dump(mode="json") for e in events]}


def _check_params_size(params: dict[str, Any], limit: int) -> None:
    """The same measure for both content types: params as compact JSON, as stored."""
    size = len(pydantic_core.to_json(params))
    if size > limit:
        raise ParamsTooLarge(
            f"params: {size} bytes of JSON, more than the limit of {limit} (max_params_bytes)",
            field="params",
        )


def _form_error(detail: str, limit: int) -> InvalidInput:
    """Starlette's form-parser refusals, as errors that name the field."""
    if "maximum size" in detail:
        return ParamsTooLarge(
            f"params: a form field is over the limit of {limit} bytes (max_params_bytes)",
            field="params",
        )
    if "files" in detail:
        return InvalidInput(f"inputs: {detail}", field="inputs")
    if "boundary" in detail:
        return InvalidInput(f"content-type: {detail}", field="content-type")
    return InvalidInput(f"body: {detail}", field="body")


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: must be a text field, not a file", field=name)
    check_text(value, name)
    return value


def _parse_form(
    form: FormData, caller: Principal, params_limit: int
) -> tuple[NewTask, list[UploadFile]]:
    flow = _text_field(form, "flow")
    if not flow or not flow.strip():
        raise InvalidInput("flow: required, the name of a flow (see GET /api/flows)", field="flow")
    if len(flow) > 200:
        raise InvalidInput("flow: at most 200 characters", field="flow")
    params = parse_params_text(_text_field(form, "params") or "{}", "params")
    _check_params_size(params, params_limit)
    raw_priority = (_text_field(form, "priority") or "0").strip()
    if not _ASCII_INTEGER.fullmatch(raw_priority):  # int() would take "٣" and "1_0"
        raise InvalidInput(f"priority: must be an integer, got {raw_priority!r}", field="priority")
    priority = int(raw_priority.partition(".")[0])
    if not -1000 <= priority <= 1000:
        raise InvalidInput("priority: must be between -1000 and 1000", field="priority")
    owner = _text_field(form, "owner")
    if owner is not None and len(owner) > 200:
        raise InvalidInput("owner: at most 200 characters", field="owner")
    files: list[UploadFile] = []
    for value in form.getlist("inputs"):
        if not isinstance(value, UploadFile):
            raise InvalidInput("inputs: must be files, not text fields", field="inputs")
        files.append(value)
    new = NewTask(
        flow,
        params,
        priority,
        caller.owner_for(owner if isinstance(owner, str) and owner else None),
        max_attempts=_form_int(form, "max_attempts", 1, 100),
        run_at=_form_time(form, "run_at"),
        delay_seconds=_form_float(form, "delay_seconds"),
        timeout_seconds=_form_float(form, "timeout_seconds"),
        then=_form_then(form),
    )
    return new, files


_STEPS: TypeAdapter[list[ChainStep]] = TypeAdapter(list[ChainStep])


def _form_then(form: FormData) -> tuple[ChainStep, ...]:
    raw = _text_field(form, "then")
    if raw is None or not raw.strip():
        return ()
    try:
        return tuple(_STEPS.validate_json(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "then" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def _form_int(form: FormData, name: str, low: int, high: int) -> int | None:
    raw = _text_field(form, name)
    if raw is None or not raw.strip():
        return None
    if not _ASCII_INTEGER.fullmatch(raw.strip()):
        raise InvalidInput(f"{name}: must be an integer, got {raw!r}", field=name)
    value = int(raw.strip().partition(".")[0])
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}", field=name)
    return value


def _form_float(form: FormData, name: str) -> float | None:
    raw = _text_field(form, name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name}: must be a number, got {raw!r}", field=name) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{name}: must be a number of seconds, 0 or more", field=name)
    return value


def _form_time(form: FormData, name: str) -> datetime | None:
    raw = _text_field(form, name)
    if raw is None or not raw.strip():
        return None
    try:
        return datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput(
            f"{name}: must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z, got {raw!r}",
            field=name,
        ) from None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


def _invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInput(f"{field}: {first['msg']}", field=field)
