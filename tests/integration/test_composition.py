"""The composition root's hook lists, as registered, and as docs/architecture.md quotes them.

Opening a runtime registers what runs inside and after every write; the list is
the one place that shows, for example, how recording ``task.done`` makes a
webhook delivery row. The docs quote the default-mode list verbatim.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from flowyard.core.settings import Settings
from flowyard.services.hooks import describe
from flowyard.services.runtime import Runtime
from tests.support.auth import ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def quoted_hooks() -> list[str]:
    """The first code block of docs/architecture.md that lists hooks."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```\n(in transaction: .*?)```", text, re.S)
    assert block, "docs/architecture.md quotes no hook list"
    return block.group(1).strip().splitlines()


async def test_default_mode_registers_the_list_the_docs_quote(tmp_path: Path) -> None:
    runtime = await Runtime.open(Settings(data_dir=tmp_path, workers=1, admin_password=None))
    try:
        assert describe(runtime.hooks) == quoted_hooks()
    finally:
        await runtime.close()


@pytest.mark.postgres
async def test_server_mode_with_nats_leaves_webhook_rows_to_the_stream(
    tmp_path: Path, pg_uri: str
) -> None:
    settings = Settings(
        mode="server",
        database_uri=pg_uri,
        data_dir=tmp_path,
        nats_url="nats://127.0.0.1:9",  # never connected: open() only wires
        admin_password=SecretStr(ADMIN_PASSWORD),
    )
    runtime = await Runtime.open(settings)
    try:
        assert describe(runtime.hooks) == [
            "in transaction: NOTIFY database workers of new work",
            "after commit: the trailing NOTIFY a debounced write owes",
            "after commit: wake the in-process worker",
            "after commit: wake the webhook dispatcher",
            "after commit: wake the NATS relay and scheduler",
        ]
        assert runtime.nats is not None
        assert runtime.nats.webhook_intake is not None
    finally:
        await runtime.close()
