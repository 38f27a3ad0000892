"""Root conftest: wires in the shared test plugins (add yours to the list)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.processes"]


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Leaked sockets then warn in the test that leaked them, not in a random later one."""
    yield
    gc.collect()
