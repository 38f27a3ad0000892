"""The built wheel lives beside a package that owns a top-level `adapters`.

The import names used to be the folder names; installing PyPI's `adapters` then
overwrote one of ours. Now only `flowyard` is ours at the top of site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OURS = {"core", "bus", "adapters", "services", "flows"}


def run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # built from a copy: an in-tree build would leave build/ in the checkout
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in OURS:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-q", "-w", out, source, cwd=out)  # fmt: skip
    return next(out.glob("flowyard-*.whl"))


def test_wheel_holds_only_flowyard_at_the_top(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"flowyard"}
    assert "flowyard/adapters/sql/migrations/versions/__init__.py" in names
    assert any(n.startswith("flowyard/services/api/static/js/") for n in names)


def test_installs_beside_a_top_level_adapters_package(wheel: Path, tmp_path: Path) -> None:
    # someone else's distribution that owns `adapters` (as PyPI's `adapters` does)
    other = tmp_path / "other"
    (other / "adapters").mkdir(parents=True)
    (other / "adapters" / "__init__.py").write_text("OWNER = 'someone else'\n")
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "someone-elses-adapters"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["adapters"]\n'
    )
    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=tmp_path)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    # the new environment sees this one's dependencies but not its editable flowyard
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = env / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps")
    run(*pip, "--no-build-isolation", other, cwd=tmp_path)
    run(*pip, wheel, cwd=tmp_path)
    probe = (
        "import adapters, flowyard.adapters.sql.engine as e, flowyard.core.task;"
        "import flowyard.services.composition.server, flowyard.services.api.app;"
        "print(adapters.OWNER); print(e.__file__)"
    )
    out = run(python, "-c", probe, cwd=tmp_path).splitlines()
    assert out[0] == "someone else"
    assert out[1].startswith(str(env))
    assert "Usage" in run(env / "bin" / "flowyard", "--help", cwd=tmp_path)
    assert not (site / "core").exists()
    assert not (site / "services").exists()
