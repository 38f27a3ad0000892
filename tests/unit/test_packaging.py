"""The wheel's package list matches the folders, all under the one `flowyard` name."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "bus", "adapters", "services", "flows")


def declared() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> set[str]:
    found: set[str] = set()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add("flowyard." + ".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_every_package_folder_is_in_the_wheel() -> None:
    assert set(declared()["packages"]) == package_folders()  # type: ignore[arg-type]


def test_folders_map_under_flowyard() -> None:
    assert declared()["package-dir"] == {f"flowyard.{f}": f for f in FOLDERS}


def test_every_python_folder_is_a_package() -> None:
    """A folder of modules without `__init__.py` would be left out of the wheel."""
    for folder in FOLDERS:
        for module in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in module.parts:
                continue
            assert (module.parent / "__init__.py").exists(), f"{module.parent} lacks __init__.py"
