"""The peers' own virtual environment: ``bench/.venv-peers``, from ``requirements-peers.txt``.

PgQueuer and taskiq-nats are not flowyard dependencies. The benchmarks that
measure them call :func:`peer_python`, which creates the environment with
``python3 -m venv`` and ``pip install -r bench/requirements-peers.txt`` when it
is missing or the requirements changed since it was made (a hash of the file
is kept inside it), and returns its interpreter. The peers' benchmark halves
(``bench/peers/``) run under that interpreter, flowyard's under the project's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-peers"
REQUIREMENTS = BENCH / "requirements-peers.txt"
PEERS = BENCH / "peers"
_STAMP = VENV / ".requirements.sha256"


def peer_python() -> Path:
    """The peers' interpreter, after making or refreshing their environment if needed."""
    python = VENV / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and _STAMP.exists() and _STAMP.read_text().strip() == digest:
        return python
    print(f"setting up {VENV} from {REQUIREMENTS.name} ...", file=sys.stderr, flush=True)
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS)],
        check=True,
        timeout=1200,
    )  # fmt: skip
    _STAMP.write_text(digest + "\n")
    return python


def run_peer(script: str, args: list[str], timeout: float) -> dict[str, object]:
    """Run ``bench/peers/SCRIPT`` under the peers' interpreter; return its ``RESULT`` JSON.

    Its other output (progress, errors) passes through to our stderr.
    """

    command = [str(peer_python()), str(PEERS / script), *args]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise RuntimeError(
            f"{script} exited {done.returncode} without a result; its output:\n{done.stdout}"
        )
    result: dict[str, object] = json.loads(results[-1].removeprefix("RESULT "))
    return result
