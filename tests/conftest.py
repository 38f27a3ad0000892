"""Root conftest: wires in the shared test plugins (add yours to the list)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from tests.support.auth import ADMIN_ENV

pytest_plugins = ["tests.support.fixtures", "tests.support.processes"]

# Every flowyard process a test starts signs in as (or bootstraps) the test admin.
os.environ.update(ADMIN_ENV)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Leaked sockets then warn in the test that leaked them, not in a random later one.

    What survives is frozen: the next collection walks only what later tests made,
    not the ~150k objects of the imported libraries (0.2-0.5 s per test otherwise).
    """
    yield
    gc.collect()
    gc.freeze()
