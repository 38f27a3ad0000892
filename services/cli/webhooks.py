"""``flowyard webhooks``: subscribe URLs to events, list and remove them, inspect deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from flowyard.core.errors import InvalidInput
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.connect import DEFAULT_SERVER, ServerOption, connect
from flowyard.services.cli.credentials import TokenOption, UserOption
from flowyard.services.cli.options import (
    ConfigOption,
    NatsCredsOption,
    NatsPasswordOption,
    NatsUserOption,
    SetOption,
)
from flowyard.services.cli.output import console, err_console, print_json_line, short_time, truncate
from flowyard.services.client import DeliveryOut

webhooks_app = typer.Typer(
    help="Send events to URLs (signed, retried): add, list, remove, deliveries.",
    no_args_is_help=True,
)

WebhookIdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The subscription id (a UUID).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Raw JSON, one object per line.")]
STATUS_STYLES = {"delivered": "green", "pending": "yellow", "failed": "red"}


def parse_webhook_id(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise InvalidInput(
            f"{value!r} is not a webhook id (expected a UUID; see 'flowyard webhooks list')",
            field="id",
        ) from None


@webhooks_app.command("add")
@async_command
async def add_webhook(
    url: Annotated[str, typer.Argument(help="Where to POST events (http:// or https://).")],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Event type to send (repeatable; default task.done)."),
    ] = None,
    flow: Annotated[
        list[str] | None,
        typer.Option("--flow", "-f", help="Only tasks of this flow (repeatable; default all)."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(help="Signing secret whsec_<base64> (default: a new one is generated)."),
    ] = None,
    json_output: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Subscribe URL; prints the id and the signing secret, which is not shown again."""
    async with connect(server, token, user) as api:
        created = await api.create_webhook(url, events=event or [], flows=flow or [], secret=secret)
    if json_output:
        print_json_line(created)
        return
    console.print(Text.assemble(("id      ", "bold"), str(created.id)))
    console.print(Text.assemble(("events  ", "bold"), ", ".join(created.events)))
    if created.flows:
        console.print(Text.assemble(("flows   ", "bold"), ", ".join(created.flows)))
    console.print(Text.assemble(("secret  ", "bold"), created.secret))
    err_console.print("keep the secret now: it is not shown again", style="yellow")


@webhooks_app.command("list")
@async_command
async def list_webhooks(
    json_output: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List subscriptions; a disabled one shows why."""
    async with connect(server, token, user) as api:
        items = await api.list_webhooks()
    if json_output:
        for item in items:
            print_json_line(item)
        return
    if not items:
        console.print("no webhooks")
        return
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("State", no_wrap=True)
    table.add_column("URL", overflow="fold")
    table.add_column("Events", overflow="fold")
    table.add_column("Flows", overflow="fold")
    for item in items:
        state = Text("enabled", style="green") if item.enabled else Text("disabled", style="red")
        if item.enabled and item.consecutive_failures:
            state.append(f" ({item.consecutive_failures} failing)", style="yellow")
        table.add_row(
            Text(str(item.id)),
            state,
            Text(item.url),
            Text(", ".join(item.events)),
            Text(", ".join(item.flows or []) or "all"),
        )
    console.print(table)
    for item in items:  # the reason in full, where it cannot be cut
        if not item.enabled:
            console.print(
                Text(f"{item.id} disabled: {item.disabled_reason or '?'}"),
                style="red",
                soft_wrap=True,
            )


@webhooks_app.command("remove")
@async_command
async def remove_webhook(
    webhook_id: WebhookIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Remove a subscription and its delivery history."""
    subscription = parse_webhook_id(webhook_id)
    async with connect(server, token, user) as api:
        await api.delete_webhook(subscription)
    console.print(f"removed {webhook_id}")


@webhooks_app.command("enable")
@async_command
async def enable_webhook(
    webhook_id: WebhookIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Turn a disabled subscription back on; its pending deliveries resume."""
    subscription = parse_webhook_id(webhook_id)
    async with connect(server, token, user) as api:
        item = await api.enable_webhook(subscription)
    console.print(f"enabled {item.id}")


@webhooks_app.command("deliveries")
@async_command
async def list_deliveries(
    webhook_id: WebhookIdArgument,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500, help="At most.")] = 20,
    json_output: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Recent deliveries, newest first, with attempts and the last error."""
    subscription = parse_webhook_id(webhook_id)
    async with connect(server, token, user) as api:
        items = await api.webhook_deliveries(subscription, limit=limit)
    if json_output:
        for item in items:
            print_json_line(item)
        return
    if not items:
        console.print("no deliveries")
        return
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("Created", no_wrap=True)
    table.add_column("Event", no_wrap=True)
    table.add_column("Task", no_wrap=True, min_width=36)
    table.add_column("Status", no_wrap=True)
    table.add_column("Attempts", justify="right")
    table.add_column("Last", overflow="ellipsis", ratio=1)
    for item in items:
        status = item.status.value
        table.add_row(
            short_time(item.created_at),
            Text(item.event_type),
            Text(str(item.task_id)),
            Text(status, style=STATUS_STYLES.get(status, "")),
            str(item.attempts),
            Text(_last(item)),
        )
    console.print(table)


def _last(item: DeliveryOut) -> str:
    if item.status.value == "pending" and item.next_attempt_at:
        tail = f", next try {short_time(item.next_attempt_at)}"
    else:
        tail = ""
    if item.last_error:
        return truncate(item.last_error, 60) + tail
    if item.last_status_code:
        return f"HTTP {item.last_status_code}{tail}"
    return tail.lstrip(", ")


@webhooks_app.command("dispatch")
@async_command
async def dispatch_webhooks(
    db: Annotated[
        str | None, typer.Option("--db", help="The server's database URI (PostgreSQL or MariaDB).")
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="NATS server: take events from the stream (nats://host:4222)."),
    ] = None,
    nats_user: NatsUserOption = None,
    nats_password: NatsPasswordOption = None,
    nats_creds: NatsCredsOption = None,
    config: ConfigOption = None,
    assignments: SetOption = None,
) -> None:
    """Send webhook deliveries beside the server (run as many as needed).

    Pair with the server setting webhook_dispatch=separate. With --nats the
    dispatchers also make the delivery rows, from the event stream.
    """
    from flowyard.services.cli.serve import configure_logging
    from flowyard.services.composition.webhooks import run_webhook_dispatcher
    from flowyard.services.config import load_settings

    settings = load_settings(
        config,
        assignments=assignments or [],
        mode="server",
        database_uri=db,
        nats_url=nats,
        nats_user=nats_user,
        nats_password=nats_password,
        nats_creds=nats_creds,
    )
    configure_logging(settings)
    await run_webhook_dispatcher(settings)
