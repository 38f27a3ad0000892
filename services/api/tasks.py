"""``/api/tasks``: create (multipart or JSON), list, show, cancel, retry, reprioritize, delete,
download, events. Reading the create bodies is ``task_requests.py``."""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from flowyard.core.errors import InvalidInput, UnsupportedMediaType
from flowyard.core.identity import Principal
from flowyard.core.task import Task, TaskState
from flowyard.services.api.auth import Admin, Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.api.edge import MULTIPART, URLENCODED, is_json, media_type
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
from flowyard.services.api.task_requests import (
    batch_invalid,
    batch_item,
    batch_specs,
    check_params_size,
    chunks,
    form_error,
    form_limits,
    invalid,
    new_task,
    one_key,
    parse_form,
    text_field,
)
from flowyard.services.runtime import Runtime
from flowyard.services.task_service import Upload

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(principal)])
Rt = Annotated[Runtime, Depends(runtime)]


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
            raise invalid(exc) from None
        check_params_size(body.params, limit)
        key = one_key(header, body.idempotency_key)
        new = dataclasses.replace(new_task(body, caller), idempotency_key=key)
        return await rt.tasks.create_keyed(new)
    if media in (MULTIPART, URLENCODED):
        try:
            form = await request.form(**form_limits(limit))
        except HTTPException as exc:  # starlette's form parser refuses with a plain 400
            raise form_error(str(exc.detail), limit) from None
        try:
            new, files = parse_form(form, caller, limit)
            key = one_key(header, text_field(form, "idempotency_key"))
            new = dataclasses.replace(new, idempotency_key=key)
            rt.tasks.validate(new, len(files))
            uploads = [Upload(f.filename or "", chunks(f)) for f in files]
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
        raise batch_invalid(exc) from None
    limit = rt.settings.max_batch_tasks
    params_limit = rt.settings.max_params_bytes
    requests = [
        batch_item(index, spec, caller, params_limit)
        for index, spec in enumerate(batch_specs(body, limit))
    ]
    tasks = await rt.tasks.create_batch(requests, limit)
    return BatchOut(ids=[t.id for t in tasks], items=[TaskOut.of(t) for t in tasks])


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
