"""What ``flowyard run`` reads from its options: parameters, input files, a delay.

Each parser raises ``InvalidInput`` naming the option (``field="--param"``), and the
option callbacks turn that into a usage error before anything is sent.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import typer

from flowyard.core.errors import InvalidInput
from flowyard.services.client import Upload


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_param_value(raw: str) -> Any:
    """JSON when it parses (``3``, ``2.5``, ``true``, ``[1,2]``, ``null``), else the string.

    NaN and Infinity stay strings: they are not JSON and the server could not read them.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return raw


def parse_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` to ``(KEY, value)``; keys stay flat (``a.b=1`` sets the key ``"a.b"``)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise InvalidInput(f"--param {item!r} is not KEY=VALUE", field="--param")
    if not key:
        raise InvalidInput(f"--param {item!r} has an empty key", field="--param")
    return key, parse_param_value(raw)


def parse_params_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(
            f"--params-json must be valid JSON ({exc})", field="--params-json"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput("--params-json must be a JSON object", field="--params-json")
    return value


def build_params(params_json: str | None, items: Iterable[str]) -> dict[str, Any]:
    """``--params-json`` first, then each ``--param`` on top (the last one of a key wins)."""
    params = parse_params_json(params_json) if params_json else {}
    params.update(parse_param(item) for item in items)
    return params


def _usage_error(exc: InvalidInput) -> typer.BadParameter:
    """Usage errors already name the option, so the message drops its own prefix."""
    return typer.BadParameter(exc.message.removeprefix(f"{exc.field} "))


def check_param_items(items: list[str] | None) -> list[str] | None:
    """Turns a malformed ``--param`` into a usage error before anything is sent."""
    for item in items or ():
        try:
            parse_param(item)
        except InvalidInput as exc:
            raise _usage_error(exc) from exc
    return items


def check_params_json(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_params_json(text)
        except InvalidInput as exc:
            raise _usage_error(exc) from exc
    return text


def open_inputs(paths: Sequence[Path], stack: ExitStack | AsyncExitStack) -> list[Upload]:
    """Open every input for streaming; all must exist before any request is made."""
    for path in paths:
        if not path.expanduser().exists():
            raise InvalidInput(f"input file not found: {path}", field="--input")
        if not path.expanduser().is_file():
            raise InvalidInput(f"input is not a file: {path}", field="--input")
    uploads: list[Upload] = []
    for path in paths:
        try:
            handle = stack.enter_context(path.expanduser().open("rb"))
        except OSError as exc:
            raise InvalidInput(
                f"cannot read input file {path}: {exc.strerror}", field="--input"
            ) from exc
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        uploads.append((path.name, handle, media_type))
    return uploads


_DELAY_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delay(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` to seconds; ``--in`` names the error."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DELAY_UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not number or value < 0 or value != value or value == float("inf"):
        raise InvalidInput(
            f"--in {text!r} is not a delay: use seconds (90) or 30s, 5m, 2h, 1d", field="--in"
        )
    return value * _DELAY_UNITS[unit]


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create --out folder {folder}: {exc.strerror}", field="--out"
        ) from exc
