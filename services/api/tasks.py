"""``/api/tasks``: create (multipart or JSON), list, show, cancel, delete, download, events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from core.errors import InvalidInput, UploadTooLarge
from core.identity import Principal
from core.task import TaskState
from services.api.auth import Caller, principal
from services.api.deps import runtime
from services.api.schemas import CreateTask, TaskOut, TaskPage
from services.runtime import Runtime
from services.task_service import NewTask, Upload

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(principal)])
Rt = Annotated[Runtime, Depends(runtime)]

MAX_INPUTS = 16
CHUNK = 1024 * 1024


@router.post("", status_code=201, response_model=TaskOut)
async def create_task(request: Request, rt: Rt, caller: Caller) -> TaskOut:
    """Multipart (``flow``, ``params`` JSON string, ``priority``, files in ``inputs``) or JSON."""
    _check_length(request, rt.settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = CreateTask.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        new = NewTask(body.flow, body.params, body.priority, caller.owner_for(body.owner))
        task = await rt.tasks.create(new)
        return TaskOut.of(task)
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        async with request.form(max_files=MAX_INPUTS, max_fields=32) as form:
            new, files = _parse_form(form, caller)
            rt.tasks.validate(new, len(files))
            uploads = [Upload(f.filename or "", _chunks(f)) for f in files]
            task = await rt.tasks.create(new, uploads)
        return TaskOut.of(task)
    raise InvalidInput(
        "content-type: send multipart/form-data (with files), a urlencoded form or JSON",
        field="content-type",
    )


@router.get("", response_model=TaskPage)
async def list_tasks(
    rt: Rt,
    caller: Caller,
    state: TaskState | None = None,
    flow: str | None = None,
    owner: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
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
    return TaskOut.of(await rt.tasks.get(task_id, caller))


@router.delete("/{task_id}", status_code=204)
async def delete_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> Response:
    await rt.tasks.delete(task_id, caller)
    return Response(status_code=204)


@router.post("/{task_id}/cancel", response_model=TaskOut)
async def cancel_task(task_id: uuid.UUID, rt: Rt, caller: Caller) -> TaskOut:
    return TaskOut.of(await rt.tasks.cancel(task_id, caller))


@router.get("/{task_id}/outputs/{name}")
async def download_output(task_id: uuid.UUID, name: str, rt: Rt, caller: Caller) -> FileResponse:
    task = await rt.tasks.get(task_id, caller)
    path, ref = rt.files.output_path(task, name)
    return FileResponse(path, media_type=ref.media_type, filename=ref.name)


@router.get("/{task_id}/events")
async def task_events(
    task_id: uuid.UUID, rt: Rt, caller: Caller
) -> dict[str, list[dict[str, Any]]]:
    events = await rt.tasks.events(task_id, caller)
    return {"items": [e.model_dump(mode="json") for e in events]}


def _check_length(request: Request, limit: int) -> None:
    """Refuse an obviously oversized body before reading it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit * MAX_INPUTS + CHUNK:
        raise UploadTooLarge(
            f"inputs: the request ({declared} bytes) is larger than the upload limit "
            f"of {limit} bytes per file",
            field="inputs",
        )


def _parse_form(form: FormData, caller: Principal) -> tuple[NewTask, list[UploadFile]]:
    flow = form.get("flow")
    if not isinstance(flow, str) or not flow.strip():
        raise InvalidInput("flow: required, the name of a flow (see GET /api/flows)", field="flow")
    raw_params = form.get("params") or "{}"
    if not isinstance(raw_params, str):
        raise InvalidInput("params: must be a JSON object in a text field", field="params")
    try:
        params = json.loads(raw_params)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"params: not valid JSON ({exc.msg})", field="params") from None
    if not isinstance(params, dict):
        raise InvalidInput("params: must be a JSON object", field="params")
    raw_priority = form.get("priority") or "0"
    try:
        priority = int(str(raw_priority))
    except ValueError:
        raise InvalidInput(
            f"priority: must be an integer, got {raw_priority!r}", field="priority"
        ) from None
    if not -1000 <= priority <= 1000:
        raise InvalidInput("priority: must be between -1000 and 1000", field="priority")
    owner = form.get("owner")
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
    )
    return new, files


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


def _invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInput(f"{field}: {first['msg']}", field=field)
