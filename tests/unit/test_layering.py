"""The layering rules, checked on the source (no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"core", "bus", "adapters", "services", "flows"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "flows": {"core", "flows"},
    "bus": {"core", "bus"},
    "adapters": {"core", "adapters"},
    "services": OURS,
}


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer(name: str) -> str:
    """`flowyard.core.task` belongs to layer `core`; a third-party module to its top name."""
    parts = name.split(".")
    return parts[1] if parts[0] == "flowyard" and len(parts) > 1 else parts[0]


def imports(path: Path) -> set[str]:
    return {layer(name) for name in imported_names(path)}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    for path in sources(package):
        ours = imports(path) & OURS
        assert ours <= ALLOWED[package], (
            f"{path.relative_to(ROOT)} imports {ours - ALLOWED[package]}"
        )


def test_torch_is_imported_only_in_flows() -> None:
    for package in OURS - {"flows"}:
        for path in sources(package):
            assert "torch" not in imports(path), f"{path.relative_to(ROOT)} imports torch"


def test_core_does_no_io() -> None:
    io_modules = {"aiofiles", "sqlalchemy", "httpx", "nats", "faststream", "psycopg", "socket"}
    for path in sources("core"):
        assert not imports(path) & io_modules, f"{path.relative_to(ROOT)} does I/O"


def test_our_packages_are_imported_under_flowyard_only() -> None:
    """A bare `import core` would find a same-named package of someone else's."""
    for package in sorted(OURS | {"tests", "bench"}):
        for path in sorted((ROOT / package).rglob("*.py")):
            bare = {n for n in imported_names(path) if n.split(".")[0] in OURS}
            assert not bare, f"{path.relative_to(ROOT)} imports {bare} without flowyard."
