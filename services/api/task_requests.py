"""Reading a ``POST /api/tasks`` body: JSON or form fields into a ``NewTask``, checked.

Every refusal is an ``InvalidInput`` that names its field (``params.seconds``,
``tasks[3].params``, ``then[0].flow``) with the same wording for both content types.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile

from flowyard.core.errors import InvalidInput, ParamsTooLarge
from flowyard.core.events import ChainStep
from flowyard.core.identity import Principal
from flowyard.core.settings import MAX_INPUT_FILES
from flowyard.services.api.edge import check_text
from flowyard.services.api.edge import parse_json_object as parse_params_text
from flowyard.services.api.schemas import CreateBatch, CreateTask
from flowyard.services.task_service import NewTask

MAX_INPUTS = MAX_INPUT_FILES
CHUNK = 1024 * 1024
_ASCII_INTEGER = re.compile(r"-?[0-9]{1,10}(\.0+)?")  # "-86.0" is an integer, "٣" is not


def form_limits(params_limit: int) -> dict[str, int]:
    """Starlette's form limits: a text part may hold params with some whitespace (a
    chunk more than ``max_params_bytes``); the exact params check follows the parse."""
    return {"max_files": MAX_INPUTS, "max_fields": 32, "max_part_size": params_limit + CHUNK}


def batch_specs(body: CreateBatch, limit: int) -> list[CreateTask]:
    """The batch's task specs: ``tasks`` as given, or ``count`` copies of ``task``."""
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
        return [body.task] * body.count
    if body.count is not None:
        raise InvalidInput("count: only with task, not with tasks", field="count")
    return body.tasks or []


def batch_item(index: int, spec: CreateTask, caller: Principal, params_limit: int) -> NewTask:
    """One item of a batch, its errors prefixed with its place (``tasks[3].params``)."""
    try:
        check_params_size(spec.params, params_limit)
    except InvalidInput as exc:
        message, field = f"tasks[{index}].{exc.message}", f"tasks[{index}].params"
        raise type(exc)(message, field=field) from None
    if spec.idempotency_key is not None:
        raise InvalidInput(
            f"tasks[{index}].idempotency_key: not taken in a batch (one key per create)",
            field=f"tasks[{index}].idempotency_key",
        )
    return new_task(spec, caller)


def one_key(header: str | None, field: str | None) -> str | None:
    """The header or the ``idempotency_key`` field; both must then agree."""
    if header is not None and field is not None and header != field:
        raise InvalidInput(
            "Idempotency-Key: the header and the idempotency_key field differ",
            field="Idempotency-Key",
        )
    return header if header is not None else field


def new_task(body: CreateTask, caller: Principal) -> NewTask:
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


def batch_invalid(exc: ValidationError) -> InvalidInput:
    """``tasks[3].params`` rather than pydantic's ``tasks.3.params``."""
    first = exc.errors()[0]
    field = ""
    for part in first["loc"]:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    field = field or "body"
    return InvalidInput(f"{field}: {first['msg']}", field=field)


def check_params_size(params: dict[str, Any], limit: int) -> None:
    """The same measure for both content types: params as compact JSON, as stored."""
    size = len(pydantic_core.to_json(params))
    if size > limit:
        raise ParamsTooLarge(
            f"params: {size} bytes of JSON, more than the limit of {limit} (max_params_bytes)",
            field="params",
        )


def form_error(detail: str, limit: int) -> InvalidInput:
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


def text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: must be a text field, not a file", field=name)
    check_text(value, name)
    return value


def parse_form(
    form: FormData, caller: Principal, params_limit: int
) -> tuple[NewTask, list[UploadFile]]:
    flow = text_field(form, "flow")
    if not flow or not flow.strip():
        raise InvalidInput("flow: required, the name of a flow (see GET /api/flows)", field="flow")
    if len(flow) > 200:
        raise InvalidInput("flow: at most 200 characters", field="flow")
    params = parse_params_text(text_field(form, "params") or "{}", "params")
    check_params_size(params, params_limit)
    raw_priority = (text_field(form, "priority") or "0").strip()
    if not _ASCII_INTEGER.fullmatch(raw_priority):  # int() would take "٣" and "1_0"
        raise InvalidInput(f"priority: must be an integer, got {raw_priority!r}", field="priority")
    priority = int(raw_priority.partition(".")[0])
    if not -1000 <= priority <= 1000:
        raise InvalidInput("priority: must be between -1000 and 1000", field="priority")
    owner = text_field(form, "owner")
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
    raw = text_field(form, "then")
    if raw is None or not raw.strip():
        return ()
    try:
        return tuple(_STEPS.validate_json(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "then" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def _form_int(form: FormData, name: str, low: int, high: int) -> int | None:
    raw = text_field(form, name)
    if raw is None or not raw.strip():
        return None
    if not _ASCII_INTEGER.fullmatch(raw.strip()):
        raise InvalidInput(f"{name}: must be an integer, got {raw!r}", field=name)
    value = int(raw.strip().partition(".")[0])
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}", field=name)
    return value


def _form_float(form: FormData, name: str) -> float | None:
    raw = text_field(form, name)
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
    raw = text_field(form, name)
    if raw is None or not raw.strip():
        return None
    try:
        return datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput(
            f"{name}: must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z, got {raw!r}",
            field=name,
        ) from None


async def chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


def invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInput(f"{field}: {first['msg']}", field=field)
