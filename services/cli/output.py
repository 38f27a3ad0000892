"""Rich helpers shared by the CLI commands.

Server-provided text (messages, errors, file names) goes into ``Text`` objects so
that square brackets in it are never read as rich markup.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.text import Text

# Results go to stdout; decoration (progress, errors) to stderr so pipes stay clean.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STATE_STYLES: dict[str, str] = {
    "queued": "yellow",
    "running": "cyan",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "bright_black",
}
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})


def print_error(message: str) -> None:
    """One red ``error: ...`` line on stderr, never wrapped so scripts can grep it."""
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True)


def print_json_line(value: Any) -> None:
    """Raw JSON on one line, bypassing rich so nothing is highlighted or wrapped."""
    _write(json.dumps(plain(value), ensure_ascii=False))


def print_json(value: Any) -> None:
    """Indented raw JSON for humans that is still valid input for ``jq``."""
    _write(json.dumps(plain(value), ensure_ascii=False, indent=2))


def plain(value: Any) -> Any:
    """A response model as the JSON the server sent; anything else as it is."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def _write(text: str) -> None:
    console.file.write(text + "\n")
    console.file.flush()


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def short_time(value: datetime | str | None, *, compact: bool = False) -> str:
    """A time (or its ISO 8601 text) in local time; ``compact`` drops the year and seconds."""
    if not value:
        return "-"
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%m-%d %H:%M" if compact else "%Y-%m-%d %H:%M:%S")


def truncate(text: str | None, width: int = 60) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) > width or line != text.strip():
        return line[: max(width - 1, 0)] + "…"
    return line


def percent(progress: float | None) -> str:
    return f"{round((progress or 0.0) * 100):d}%"


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
