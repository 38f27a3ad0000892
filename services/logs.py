"""Logging for ``flowyard serve`` and ``flowyard worker``: text or JSON, stderr or a file.

Libraries are held at WARNING (unless ``log_level: debug``): httpx would log one
INFO line per webhook request, alembic one per migration step, FastStream and
uvicorn one per message or request. flowyard's own records may carry
structured ``fields`` (``extra={"fields": {...}}``, as the task transition lines
in ``services/metrics.py`` do): ``key=value`` after the text, or keys of the
JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowyard.core.settings import LogFormat, LogLevel

QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "alembic",
    "faststream",
    "nats",
    "asyncio",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "aiosqlite",
    "sqlalchemy",
)
"""Third-party loggers kept at WARNING unless debugging."""

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """The classic line, then the record's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{k}={_plain(v)}" for k, v in _fields(record).items() if k not in ("event", "task_id")
        )
        if not extra:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {extra}{newline}{rest}"


def _plain(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text or '"' in text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


def configure_logging(
    level: LogLevel = "info", fmt: LogFormat = "text", file: Path | None = None
) -> None:
    """Replace the root handlers with one of ours; safe to call again (tests, per-GPU runs)."""
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    library_level = logging.DEBUG if level == "debug" else logging.WARNING
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(library_level)
        if name.startswith("uvicorn"):  # uvicorn's own handlers would bypass the format
            logger.handlers.clear()
            logger.propagate = True
