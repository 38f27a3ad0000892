"""What a create request is, and every check it passes before a byte is stored.

``TaskRules`` refuses a request whose flow is unknown, whose params, schedule,
chain or inputs are wrong, with an ``InvalidInput`` naming the field; it also
builds the ``task.created`` event of a request that passed. No I/O.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flowyard.core.errors import FlowNotFound, InvalidInput
from flowyard.core.events import ChainStep, FileRef, TaskCreated, utcnow
from flowyard.core.flow import Flow
from flowyard.core.ports import FlowSource

MAX_CHAIN_DEPTH = 5
MAX_CHAIN_STEPS = 20
MAX_ATTEMPTS = 100
"""The most attempts one task may ask for."""
MAX_DELAY_SECONDS = 366 * 24 * 3600
"""The furthest a task may be scheduled: about a year."""


@dataclass
class Upload:
    filename: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class NewTask:
    flow: str
    params: dict[str, Any]
    priority: int = 0
    owner: str = "admin"
    max_attempts: int | None = None
    """None: the flow's ``max_attempts``, else the server's setting."""
    run_at: datetime | None = None
    delay_seconds: float | None = None
    timeout_seconds: float | None = None
    then: tuple[ChainStep, ...] = ()
    """Follow-ups created when this task succeeds (``services/chains.py``)."""
    idempotency_key: str | None = None
    """A repeat within the window returns the first task (per owner); see ``create_keyed``."""


def request_digest(request: NewTask, params: dict[str, Any], filenames: Sequence[str]) -> str:
    """What makes two creates "the same request" for an idempotency key."""
    data = {
        "flow": request.flow,
        "params": params,
        "priority": request.priority,
        "max_attempts": request.max_attempts,
        "run_at": request.run_at.isoformat() if request.run_at else None,
        "delay_seconds": request.delay_seconds,
        "timeout_seconds": request.timeout_seconds,
        "then": [step.model_dump(mode="json") for step in request.then],
        "inputs": list(filenames),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def check_idempotency_key(key: str | None) -> None:
    if key is None:
        return
    if not 1 <= len(key) <= 200 or not all("!" <= ch <= "~" for ch in key):
        raise InvalidInput(
            "Idempotency-Key: 1 to 200 visible ASCII characters (no spaces)",
            field="Idempotency-Key",
        )


class TaskRules:
    def __init__(
        self, flows: FlowSource, *, max_attempts: int, schedule_tolerance: float = 60.0
    ) -> None:
        """``schedule_tolerance``: seconds a ``run_at`` may lie in the past (clock skew)."""
        self.flows = flows
        self.max_attempts = max_attempts
        self.schedule_tolerance = schedule_tolerance

    def flow(self, name: str) -> type[Flow]:
        try:
            return self.flows.get(name)
        except FlowNotFound as exc:
            raise InvalidInput(f"flow: {exc.message}", field="flow") from None

    def validate(self, request: NewTask, upload_count: int) -> type[Flow]:
        """Everything that can be checked before a byte is written."""
        flow_cls = self.flow(request.flow)
        flow_cls.parse_params(request.params)
        self.not_before(request)
        check_idempotency_key(request.idempotency_key)
        self.check_chain(flow_cls, request.then, "then")
        if request.timeout_seconds is not None and not 0 < request.timeout_seconds <= (
            MAX_DELAY_SECONDS
        ):
            raise InvalidInput(
                "timeout_seconds: must be more than 0 (and at most a year)",
                field="timeout_seconds",
            )
        if request.max_attempts is not None and not 1 <= request.max_attempts <= MAX_ATTEMPTS:
            raise InvalidInput(
                f"max_attempts: must be between 1 and {MAX_ATTEMPTS}", field="max_attempts"
            )
        required = [spec for spec in flow_cls.inputs if spec.required]
        if upload_count < len(required):
            names = ", ".join(spec.name for spec in required)
            raise InvalidInput(
                f"inputs: flow {request.flow!r} needs {len(required)} input file(s) ({names}), "
                f"got {upload_count}",
                field="inputs",
            )
        if upload_count > len(flow_cls.inputs):
            raise InvalidInput(
                f"inputs: flow {request.flow!r} takes at most {len(flow_cls.inputs)} input "
                f"file(s), got {upload_count}",
                field="inputs",
            )
        return flow_cls

    def not_before(self, request: NewTask, now: datetime | None = None) -> datetime | None:
        """When a scheduled task becomes claimable; None: at once (also for a run_at just past)."""
        now = now or utcnow()
        if request.run_at is not None and request.delay_seconds is not None:
            raise InvalidInput("run_at: give run_at or delay_seconds, not both", field="run_at")
        if request.delay_seconds is not None:
            if not 0 <= request.delay_seconds <= MAX_DELAY_SECONDS:
                raise InvalidInput(
                    f"delay_seconds: must be between 0 and {MAX_DELAY_SECONDS}",
                    field="delay_seconds",
                )
            at = now + timedelta(seconds=request.delay_seconds)
        elif request.run_at is not None:
            at = request.run_at
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at < now - timedelta(seconds=self.schedule_tolerance):
                raise InvalidInput(
                    f"run_at: {at.isoformat()} is in the past (more than "
                    f"{self.schedule_tolerance:g}s ago; schedule_tolerance_seconds)",
                    field="run_at",
                )
            if at > now + timedelta(seconds=MAX_DELAY_SECONDS):
                raise InvalidInput("run_at: at most a year from now", field="run_at")
        else:
            return None
        return at if at > now else None

    def check_chain(
        self, parent: type[Flow], steps: Sequence[ChainStep], field: str, depth: int = 0
    ) -> None:
        """Refused at create, not at run: unknown flows, bad params, inputs a parent lacks."""
        if depth >= MAX_CHAIN_DEPTH and steps:
            raise InvalidInput(f"{field}: chains nest at most {MAX_CHAIN_DEPTH} deep", field=field)
        if len(steps) > MAX_CHAIN_STEPS:
            raise InvalidInput(f"{field}: at most {MAX_CHAIN_STEPS} follow-ups", field=field)
        for index, step in enumerate(steps):
            where = f"{field}[{index}]"
            try:
                child = self.flows.get(step.flow)
            except FlowNotFound as exc:
                raise InvalidInput(f"{where}.flow: {exc.message}", field=f"{where}.flow") from None
            try:
                child.parse_params(step.params)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}.{exc.message}", field=f"{where}.{exc.field}") from None
            if not -1000 <= step.priority <= 1000:
                raise InvalidInput(
                    f"{where}.priority: must be between -1000 and 1000", field=f"{where}.priority"
                )
            needed = sum(1 for spec in child.inputs if spec.required)
            if needed > len(parent.outputs):
                raise InvalidInput(
                    f"{where}.flow: {step.flow!r} needs {needed} input file(s), but "
                    f"{parent.name!r} makes {len(parent.outputs)} output(s)",
                    field=f"{where}.flow",
                )
            self.check_chain(child, step.then, f"{where}.then", depth + 1)

    def attempts_for(self, request: NewTask, flow_cls: type[Flow]) -> int:
        return request.max_attempts or flow_cls.max_attempts or self.max_attempts

    def created(
        self,
        request: NewTask,
        flow_cls: type[Flow],
        params: dict[str, Any],
        *,
        task_id: uuid.UUID,
        not_before: datetime | None,
        inputs: Sequence[FileRef] = (),
    ) -> TaskCreated:
        """The ``task.created`` event of a request that passed ``validate``."""
        return TaskCreated(
            task_id=task_id,
            flow=request.flow,
            owner=request.owner,
            params=params,
            inputs=tuple(inputs),
            priority=request.priority,
            max_attempts=self.attempts_for(request, flow_cls),
            not_before=not_before,
            timeout_seconds=request.timeout_seconds,
            then=request.then,
        )
