"""The Dockerfile installs what the README says (no image is built here: no Docker engine)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_PIN = re.compile(r"pip install (?:--quiet )?torch==([\w.+]+)")
EXTRAS = re.compile(r"pip install (?:--quiet )?(?:-e )?'\.\[([a-z,]+)\]'")


def pins(text: str) -> set[str]:
    return set(TORCH_PIN.findall(text))


def extras(text: str) -> list[set[str]]:
    return [set(group.split(",")) for group in EXTRAS.findall(text)]


def run_lines(dockerfile: str) -> list[str]:
    joined = dockerfile.replace("\\\n", " ")
    return [line.strip()[4:] for line in joined.splitlines() if line.strip().startswith("RUN ")]


def test_dockerfile_installs_as_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(pins(readme)) == 1, f"the README pins torch once: {pins(readme)}"
    assert pins(dockerfile) == pins(readme) == pins(ci)
    quick_start, tests = extras(readme)[:2]
    assert quick_start == {"flows", "text"}
    assert tests == {"flows", "text", "test"}
    assert extras(dockerfile) == [quick_start]
    assert extras(ci) == [tests]
    steps = run_lines(dockerfile)
    torch_step = next(i for i, s in enumerate(steps) if TORCH_PIN.search(s))
    package_step = next(i for i, s in enumerate(steps) if EXTRAS.search(s))
    assert torch_step < package_step, "torch first, so its build is the one pip keeps"
    assert "--index-url" in steps[torch_step], "the torch build is chosen by its index"


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"(?m)^COPY (\w+) \./\1$", dockerfile))
    assert packages <= copied, f"the image lacks {packages - copied}"
    assert re.search(r"(?m)^COPY pyproject\.toml README\.md \./$", dockerfile)


def test_torch_is_only_in_the_flows_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("torch", "numpy", "pillow"))]
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["flows"])
