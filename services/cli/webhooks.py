"""``flowyard webhooks``: subscribe URLs to events, list and remove them, inspect deliveries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import httpx
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from flowyard.core.errors import InvalidInput
from flowyard.services.cli.client import DEFAULT_SERVER, ApiClient, ServerOption
from flowyard.services.cli.credentials import TokenOption, UserOption, resolve_auth
from flowyard.services.cli.output import console, err_console, print_json_line, short_time, truncate

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
def add_webhook(
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
    auth = resolve_auth(server, token, user)
    created = asyncio.run(_add(server, auth, url, event or [], flow or [], secret))
    if json_output:
        print_json_line(created)
        return
    console.print(Text.assemble(("id      ", "bold"), str(created.get("id"))))
    console.print(Text.assemble(("events  ", "bold"), ", ".join(created.get("events") or [])))
    if created.get("flows"):
        console.print(Text.assemble(("flows   ", "bold"), ", ".join(created["flows"])))
    console.print(Text.assemble(("secret  ", "bold"), str(created.get("secret"))))
    err_console.print("keep the secret now: it is not shown again", style="yellow")


@webhooks_app.command("list")
def list_webhooks(
    json_output: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List subscriptions; a disabled one shows why."""
    items = asyncio.run(_list(server, resolve_auth(server, token, user)))
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
        state = (
            Text("enabled", style="green") if item.get("enabled") else Text("disabled", style="red")
        )
        if item.get("enabled") and item.get("consecutive_failures"):
            state.append(f" ({item['consecutive_failures']} failing)", style="yellow")
        table.add_row(
            Text(str(item.get("id"))),
            state,
            Text(str(item.get("url"))),
            Text(", ".join(item.get("events") or [])),
            Text(", ".join(item.get("flows") or []) or "all"),
        )
    console.print(table)
    for item in items:  # the reason in full, where it cannot be cut
        if not item.get("enabled"):
            console.print(
                Text(f"{item.get('id')} disabled: {item.get('disabled_reason') or '?'}"),
                style="red",
                soft_wrap=True,
            )


@webhooks_app.command("remove")
def remove_webhook(
    webhook_id: WebhookIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Remove a subscription and its delivery history."""
    subscription = parse_webhook_id(webhook_id)
    asyncio.run(_remove(server, resolve_auth(server, token, user), subscription))
    console.print(f"removed {webhook_id}")


@webhooks_app.command("enable")
def enable_webhook(
    webhook_id: WebhookIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Turn a disabled subscription back on; its pending deliveries resume."""
    subscription = parse_webhook_id(webhook_id)
    item = asyncio.run(_enable(server, resolve_auth(server, token, user), subscription))
    console.print(f"enabled {item.get('id')}")


@webhooks_app.command("deliveries")
def list_deliveries(
    webhook_id: WebhookIdArgument,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500, help="At most.")] = 20,
    json_output: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Recent deliveries, newest first, with attempts and the last error."""
    subscription = parse_webhook_id(webhook_id)
    auth = resolve_auth(server, token, user)
    items = asyncio.run(_deliveries(server, auth, subscription, limit))
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
        status = str(item.get("status"))
        table.add_row(
            short_time(item.get("created_at")),
            Text(str(item.get("event_type"))),
            Text(str(item.get("task_id"))),
            Text(status, style=STATUS_STYLES.get(status, "")),
            str(item.get("attempts", 0)),
            Text(_last(item)),
        )
    console.print(table)


def _last(item: dict[str, Any]) -> str:
    if item.get("status") == "pending" and item.get("next_attempt_at"):
        tail = f", next try {short_time(item['next_attempt_at'])}"
    else:
        tail = ""
    if item.get("last_error"):
        return truncate(str(item["last_error"]), 60) + tail
    if item.get("last_status_code"):
        return f"HTTP {item['last_status_code']}{tail}"
    return tail.lstrip(", ")


async def _add(
    server: str,
    auth: httpx.Auth | None,
    url: str,
    events: list[str],
    flows: list[str],
    secret: str | None,
) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.create_webhook(url, events=events, flows=flows, secret=secret)


async def _list(server: str, auth: httpx.Auth | None) -> list[dict[str, Any]]:
    async with ApiClient(server, auth=auth) as api:
        return await api.list_webhooks()


async def _remove(server: str, auth: httpx.Auth | None, webhook_id: str) -> None:
    async with ApiClient(server, auth=auth) as api:
        await api.delete_webhook(webhook_id)


async def _enable(server: str, auth: httpx.Auth | None, webhook_id: str) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.enable_webhook(webhook_id)


async def _deliveries(
    server: str, auth: httpx.Auth | None, webhook_id: str, limit: int
) -> list[dict[str, Any]]:
    async with ApiClient(server, auth=auth) as api:
        return await api.webhook_deliveries(webhook_id, limit=limit)
