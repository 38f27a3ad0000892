"""``flowyard flows``: what the server can run, as the server reports it.

The list comes from the server, not from local entry points, because the
workers behind it decide which flows exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from flowyard.core.flow import InputSpec
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.connect import DEFAULT_SERVER, ServerOption, connect
from flowyard.services.cli.credentials import TokenOption, UserOption
from flowyard.services.cli.output import console, print_json_line

flows_app = typer.Typer(help="Flows the server can run.", no_args_is_help=True)


@flows_app.command("list")
@async_command
async def list_flows(
    json_output: Annotated[
        bool, typer.Option("--json", help="One raw JSON flow per line.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List flows with their inputs and parameters."""
    async with connect(server, token, user) as api:
        flows = await api.list_flows()
    if json_output:
        for flow in flows:
            print_json_line(flow)
        return
    if not flows:
        console.print("no flows registered")
        return
    table = Table("Name", "Version", "Description", "Inputs", "Params")
    for flow in flows:
        table.add_row(
            Text(flow.name, style="bold"),
            Text(flow.version),
            Text(flow.description or ""),
            Text("\n".join(describe_input(item) for item in flow.inputs)),
            Text("\n".join(describe_params(flow.params_schema))),
        )
    console.print(table)


def describe_input(item: InputSpec) -> str:
    """``name: media`` with ``?`` after the name when the input is optional."""
    name = item.name + ("" if item.required else "?")
    return f"{name}: {', '.join(item.media)}" if item.media else name


def describe_params(schema: Mapping[str, Any]) -> list[str]:
    """One ``name: type [= default]`` line per property; required ones end with ``*``."""
    required = set(schema.get("required") or ())
    lines = []
    for name, prop in (schema.get("properties") or {}).items():
        text = f"{name}{'*' if name in required else ''}: {param_type(prop, schema)}"
        if isinstance(prop, Mapping) and "default" in prop:
            text += f" = {json.dumps(prop['default'])}"
        lines.append(text)
    return lines


def param_type(prop: Any, root: Mapping[str, Any], depth: int = 0) -> str:
    """A short type name for a JSON-schema property (pydantic's anyOf/$ref included)."""
    if not isinstance(prop, Mapping) or depth > 8:  # a recursive schema ends here
        return "any"
    if "$ref" in prop:
        target = _resolve(str(prop["$ref"]), root)
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        return param_type(target, root, depth + 1) if target else name
    if "enum" in prop:
        return "|".join(json.dumps(value) for value in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " | ".join(
                dict.fromkeys(param_type(item, root, depth + 1) for item in prop[key])
            )
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(str(item) for item in kind)
    if kind == "array" and isinstance(prop.get("items"), Mapping):
        return f"array[{param_type(prop['items'], root, depth + 1)}]"
    return str(kind) if kind else "any"


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A local ``#/...`` reference, or None for anything else (no fetching)."""
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None
