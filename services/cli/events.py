"""``flowyard events``: follow live events (``tail``) and replay the event log (``replay``).

``tail`` asks the server (``GET /api/events/stream``). ``replay`` is an admin
tool that needs no server: it reads the log itself, from JetStream when NATS is
configured (``--nats``/``FLOWYARD_NATS_URL``), else from the database
(``--db``/``FLOWYARD_DATABASE_URI``, or the SQLite file in ``--data-dir``).
Events go to stdout as JSON lines; progress and summaries go to stderr.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from flowyard.core.errors import ConfigError, InvalidInput, TaskNotFound, Unavailable
from flowyard.core.events import EVENT_TYPES, utcnow
from flowyard.core.replay import EventFilter, parse_point
from flowyard.core.settings import Settings
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.connect import DEFAULT_SERVER, ServerOption, connect
from flowyard.services.cli.credentials import TokenOption, UserOption
from flowyard.services.cli.options import ConfigOption
from flowyard.services.cli.output import err_console, print_json_line
from flowyard.services.config import load_settings

if TYPE_CHECKING:  # the database and NATS clients load only when replay runs
    from flowyard.adapters.sql.database import Database
    from flowyard.services.event_replay import EventLog, RebuildReport

events_app = typer.Typer(
    help="Follow live events, or replay the event log (admin).", no_args_is_help=True
)

RECONNECT_ATTEMPTS = 10
RECONNECT_MAX_SECONDS = 5.0
TYPES_HELP = f"Only this event type (repeatable): {', '.join(EVENT_TYPES)}."

FlowOption = Annotated[str | None, typer.Option("--flow", "-f", help="Only this flow.")]
TypeOption = Annotated[list[str] | None, typer.Option("--type", "-t", help=TYPES_HELP)]


# -- tail ------------------------------------------------------------------


@events_app.command("tail")
@async_command
async def tail_events(
    flow: FlowOption = None,
    event_type: TypeOption = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Print live events as JSON lines until interrupted (reconnects if the server restarts)."""
    with replay_flags():
        wanted = EventFilter(flow=flow, types=tuple(event_type or ()))
    failures = 0
    async with connect(server, token, user) as api:
        while True:
            try:
                async with api.open_event_stream(None) as events:
                    failures = 0
                    async for event in events:
                        if wanted.flow in (None, event.flow) and (
                            not wanted.types or event.type in wanted.types
                        ):
                            print_json_line(event)
            except (httpx.TransportError, Unavailable) as exc:
                failures += 1
                if failures > RECONNECT_ATTEMPTS:
                    raise
                delay = min(RECONNECT_MAX_SECONDS, 0.25 * 2**failures)
                err_console.print(
                    f"event stream lost ({type(exc).__name__}); reconnecting in {delay:.1f}s "
                    "(events in between are not shown: use 'events replay --since' for them)",
                    style="yellow",
                )
                await asyncio.sleep(delay)
                continue
            failures += 1  # the server closed the stream: reconnect like after an error
            if failures > RECONNECT_ATTEMPTS:
                raise Unavailable(f"the server at {api.server} keeps closing the event stream")
            await asyncio.sleep(min(RECONNECT_MAX_SECONDS, 0.25 * 2**failures))


REPLAY_FLAGS = {
    "since": "--since",
    "until": "--until",
    "type": "--type",
    "rebuild": "--rebuild",
    "task": "--task",
    "flow": "--flow",
}
"""``core.replay``'s field names and the options that give them."""
_FIELD = re.compile(r"`([a-z_]+)`")


@contextmanager
def replay_flags() -> Iterator[None]:
    """``core.replay`` names fields (`since`); here the error names the option (--since)."""
    try:
        yield
    except InvalidInput as exc:
        message = _FIELD.sub(lambda m: REPLAY_FLAGS.get(m[1], m[1]), exc.message)
        field = REPLAY_FLAGS.get(exc.field or "", exc.field)
        raise type(exc)(message, field=field) from exc


# -- replay ----------------------------------------------------------------


@events_app.command("replay")
@async_command
async def replay_events(
    since: Annotated[
        str | None,
        typer.Option(help="From this sequence number or time (ISO 8601, or 30m/2h/7d ago)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to (not including) this sequence number or time.")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's events.")] = None,
    flow: FlowOption = None,
    event_type: TypeOption = None,
    to: Annotated[
        str, typer.Option("--to", help="'print' (JSON lines) or 'webhook:ID' (deliver again).")
    ] = "print",
    rebuild: Annotated[
        bool,
        typer.Option("--rebuild", help="Rebuild tasks from events; report every difference."),
    ] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URI (default: FLOWYARD_DATABASE_URI or SQLite)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The server's data folder (default ./flowyard-data)."),
    ] = None,
    nats_url: Annotated[
        str | None,
        typer.Option("--nats", help="Read the JetStream event stream (or FLOWYARD_NATS_URL)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Read the event log: print it, re-deliver it to a webhook, or rebuild and diff tasks."""
    settings = load_settings(config, database_uri=db, data_dir=data_dir, nats_url=nats_url)
    now = utcnow()
    with replay_flags():
        selected = EventFilter(
            since=parse_point(since, "since", now) if since is not None else None,
            until=parse_point(until, "until", now) if until is not None else None,
            task_id=_task_id(task),
            flow=flow,
            types=tuple(event_type or ()),
        )
        webhook_id = _target(to)
        if rebuild:
            if webhook_id is not None:
                raise InvalidInput(
                    "--rebuild compares tasks; it cannot be combined with --to webhook"
                )
            selected = selected.for_rebuild()
        code = await _replay(settings, selected, webhook_id, rebuild)
    raise typer.Exit(code)


def _task_id(value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise InvalidInput(f"--task: {value!r} is not a task id (a UUID)", field="--task") from None


def _target(value: str) -> uuid.UUID | None:
    """None for ``print``, the subscription id for ``webhook:ID``."""
    if value == "print":
        return None
    kind, _, ident = value.partition(":")
    if kind == "webhook":
        try:
            return uuid.UUID(ident.strip())
        except ValueError:
            raise InvalidInput(
                f"--to: {ident!r} is not a webhook id (see 'flowyard webhooks list')",
                field="--to",
            ) from None
    raise InvalidInput(f"--to: use 'print' or 'webhook:ID', not {value!r}", field="--to")


def _database(settings: Settings) -> Database:
    """The configured database, never a new empty SQLite file made by mistake."""
    from flowyard.adapters.sql.database import Database
    from flowyard.adapters.sql.engine import make_engine

    if settings.database_uri is None:
        path = (settings.data_dir / "flowyard.db").resolve()
        if not path.is_file():
            raise ConfigError(
                f"no flowyard database at {path}: pass --data-dir (the server's data folder) "
                "or --db URI"
            )
    return Database(make_engine(settings.db_uri, pool_size=2))


async def _replay(
    settings: Settings, selected: EventFilter, webhook_id: uuid.UUID | None, rebuild: bool
) -> int:
    from flowyard.adapters.sql.engine import check_schema, safe_url
    from flowyard.services.event_replay import JetStreamEventLog, SqlEventLog, rebuild_and_compare

    needs_db = rebuild or webhook_id is not None or not settings.nats_url
    db = _database(settings) if needs_db else None
    log: EventLog
    if settings.nats_url:
        log = JetStreamEventLog(settings.nats_url)
    else:
        assert db is not None
        log = SqlEventLog(db, f"the event log in {safe_url(db.engine)}")
    try:
        if db is not None and webhook_id is not None:
            await check_schema(db.engine)
        started_at = utcnow()
        total = await log.prepare(selected)
        with _progress(total) as advance:
            if rebuild:
                assert db is not None
                report = await rebuild_and_compare(
                    log, selected, db, started_at=started_at, advance=advance
                )
                return _print_report(report, log.description)
            if webhook_id is not None:
                assert db is not None
                return await _to_webhook(log, selected, db, webhook_id, settings, advance)
            printed = 0
            async for seq, event in log.read(selected):
                print_json_line(event.model_dump(mode="json"))
                printed += 1
                advance(seq)
            if printed == 0 and selected.task_id is not None:
                raise TaskNotFound(f"no events of task {selected.task_id} in {log.description}")
        err_console.print(f"{printed} events from {log.description}", style="dim")
        return 0
    finally:
        await log.close()
        if db is not None:
            await db.close()


async def _to_webhook(
    log: EventLog,
    selected: EventFilter,
    db: Database,
    webhook_id: uuid.UUID,
    settings: Settings,
    advance: Any,
) -> int:
    from flowyard.adapters.sql.webhook_store import SqlWebhookStore
    from flowyard.services.event_replay import replay_to_webhook

    store = SqlWebhookStore(db)
    sub = await store.get(webhook_id)
    queued = await replay_to_webhook(
        log, selected, store, webhook_id, public_url=settings.public_url, advance=advance
    )
    err_console.print(
        f"queued {queued} events for webhook {webhook_id} ({sub.url}) under their original "
        "ids; the running server delivers them"
    )
    if not sub.enabled:
        err_console.print(
            f"the subscription is disabled ({sub.disabled_reason}): nothing is sent until "
            f"'flowyard webhooks enable {webhook_id}'",
            style="yellow",
        )
    return 0


def _print_report(report: RebuildReport, description: str) -> int:
    for task_id, found in sorted(report.differences.items(), key=lambda item: str(item[0])):
        for line in found:
            print(f"task {task_id}: {line}")
    notes = [f"rebuilt {report.rebuilt} tasks from {description}, compared {report.compared}"]
    if report.only_in_log:
        notes.append(f"{len(report.only_in_log)} in the log only (deleted from the table)")
    if report.changed_during:
        notes.append(f"{len(report.changed_during)} changed while replaying (not compared)")
    if report.skipped_events:
        notes.append(f"{report.skipped_events} events refused by the state machine, as live")
    err_console.print("; ".join(notes))
    if report.clean:
        err_console.print("no differences", style="green")
        return 0
    err_console.print(f"{len(report.differences)} tasks differ from their events", style="red")
    return 1


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on stderr for long replays (only on a terminal); yields ``advance(pos)``."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal or total < 1000,
    )
    bar = progress.add_task("replay", total=total)

    def advance(_position: int) -> None:
        progress.advance(bar)

    with progress:
        yield advance
