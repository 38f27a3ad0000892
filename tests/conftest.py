"""Root conftest: wires in the shared test plugins (add yours to the list)."""

pytest_plugins = ["tests.support.fixtures"]
