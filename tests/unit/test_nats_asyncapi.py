"""The AsyncAPI document FastStream generates for the NATS subjects, and its copy in docs/."""

from __future__ import annotations

from pathlib import Path

import yaml

from flowyard.services.cli.main import app, run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_flowyard_asyncapi_generates_the_document(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    assert run_cli(app, ["asyncapi", "--output", str(target)]) == 0
    document = yaml.safe_load(target.read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    for kind in ("created", "claimed", "progress", "cancel_requested", "requeued", "done"):
        assert f"flowyard.events.{kind}.{{owner}}.{{flow}}" in addresses
    assert "flowyard.work.{owner}.{flow}" in addresses
    assert "flowyard.rpc.lease.*.*" in addresses
    done = document["components"]["schemas"]["TaskDone"]
    assert {"status", "outputs", "attempt", "task_id"} <= set(done["properties"])


def test_the_published_copy_is_up_to_date(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    assert run_cli(app, ["asyncapi", "--output", str(target)]) == 0
    assert target.read_text() == DOCS.read_text(), (
        "docs/asyncapi.yaml is stale: run 'flowyard asyncapi -o docs/asyncapi.yaml'"
    )
