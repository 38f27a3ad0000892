"""compose.yaml, run without Docker: every flowyard service's own command, natively.

The test reads ``compose.yaml`` as compose would (``${VAR:?}`` interpolation,
YAML anchors and merge keys), then walks the services in ``depends_on`` order.
PostgreSQL and nats-server come from the fixtures (nats-server with the repo's
``deploy/nats-server.conf`` and the ``users.conf`` the nats-auth service
generated); each flowyard service runs its exact ``command`` with its exact
``environment``, only hosts, ports and volume paths rewritten to this machine,
and must pass its own health check command (a one-shot service must exit 0).
Then tasks run end to end: API → outbox → NATS and the database → both workers.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from tests.support.auth import ADMIN_AUTH, ADMIN_NAME, ADMIN_PASSWORD
from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, ProcessError, ProcessGroup, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.nats, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-Secret-compose-1",
    "FLOWYARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "FLOWYARD_NATS_PASSWORD": "nats-Secret-compose-1",
}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        found = env.get(name)
        if op and op.startswith(":") and not found:
            found = None
        if found is not None:
            return found
        if op and op.endswith("?"):
            raise AssertionError(f"compose would refuse to start: {arg or name}")
        return arg or "" if op else ""

    return _VAR.sub(substitute, value)


def depends_order(services: Mapping[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"depends_on cycle: {path}"
        if name in order:
            return
        for dependency in services[name].get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name)
    return order


def is_flowyard(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("flowyard")


def test_compose_file_has_no_secrets_and_names_what_the_design_asks() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    services = raw["services"]
    assert {"postgres", "nats", "server", "nats-auth", "nats-worker", "db-worker"} <= set(services)
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key):
                assert re.search(r"\$\{[A-Z_]+:\?", str(value)), f"{name}: {key} is hard-coded"
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name} has no health check"
    for name in ("nats-worker", "db-worker"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name], f"{name} must scale: no fixed host port"
    assert services["server"]["command"][1:5] == ["serve", "--mode", "server", "--host"]
    assert "jetstream {" in (ROOT / "deploy" / "nats-server.conf").read_text()
    assert set(raw["volumes"]) == {"pgdata", "tasks", "natsauth", "natsdata"}
    with pytest.raises(AssertionError, match="set POSTGRES_PASSWORD"):
        interpolate(raw, {})


class Stack:
    """The services as native processes, with compose's paths, hosts and ports rewritten."""

    def __init__(self, tmp: Path, pg_uri: str, group: ProcessGroup) -> None:
        self.tmp = tmp
        self.pg_uri = pg_uri
        self.group = group
        self.nats_port = free_port()  # known before nats starts: the server starts first
        self.ports: dict[tuple[str, str], int] = {}
        self.processes: dict[str, ManagedProcess] = {}
        self.server_url = ""

    def port(self, service: str, container_port: str) -> int:
        key = (service, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def rewrite(self, name: str, service: Mapping[str, Any], text: str) -> str:
        text = re.sub(r"postgresql://[^\s]*@postgres:5432/flowyard", self.pg_uri, text)
        text = text.replace("nats://nats:4222", f"nats://127.0.0.1:{self.nats_port}")
        for volume in service.get("volumes", []):
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if not source.startswith("."):  # a named volume: one folder shared by services
                text = text.replace(target, str(self.tmp / "volumes" / source))
        text = text.replace("/var/lib/flowyard", str(self.tmp / name / "var-lib-flowyard"))
        text = text.replace("0.0.0.0", "127.0.0.1")
        for container_port in ("8288", "9100"):
            if re.search(rf"(^|\D){container_port}(\D|$)", text):
                port = str(self.port(name, container_port))
                text = re.sub(rf"(?<!\d){container_port}(?!\d)", port, text)
        return text

    def argv(self, name: str, service: Mapping[str, Any], words: list[str]) -> list[str]:
        out = [self.rewrite(name, service, str(w)) for w in words]
        if out[0] == "flowyard":
            out[0] = str(Path(sys.executable).parent / "flowyard")
        elif out[0] == "python":
            out[0] = sys.executable
        return out

    def environment(self, name: str, service: Mapping[str, Any]) -> dict[str, str]:
        env = {k: self.rewrite(name, service, str(v)) for k, v in service["environment"].items()}
        home = str(self.tmp / name)
        return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": home, **env}

    def run_service(self, name: str, service: Mapping[str, Any]) -> None:
        workdir = self.tmp / name / "workdir"  # the image's WORKDIR: no .env, no data here
        workdir.mkdir(parents=True)
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith("."):
                (self.tmp / "volumes" / source).mkdir(parents=True, exist_ok=True)
        argv = ["env", "-i", "-C", str(workdir), *self._env_args(name, service)]
        argv += self.argv(name, service, service["command"])
        if service.get("restart") == "no":  # one-shot: depends_on service_completed_successfully
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, f"{name} failed: {done.stderr[-2000:]}"
            return
        process = self.group.start(name, argv)
        self.processes[name] = process
        self.wait_healthy(name, service, process)
        if name == "server":
            self.server_url = f"http://127.0.0.1:{self.port(name, '8288')}"

    def _env_args(self, name: str, service: Mapping[str, Any]) -> list[str]:
        return [f"{k}={v}" for k, v in self.environment(name, service).items()]

    def wait_healthy(self, name: str, service: Mapping[str, Any], process: ManagedProcess) -> None:
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: health check must be exec form (CMD)"
        check = self.argv(name, service, test[1:])

        def healthy() -> bool:
            if not process.alive():
                raise ProcessError(f"{name} exited\n{process.log_tail()}")
            return subprocess.run(check, capture_output=True, timeout=10).returncode == 0

        wait_until(healthy, 90, f"{name}'s health check {check}", interval=0.5, group=self.group)

    def start_nats(self, factory: Callable[..., NatsServer], service: Mapping[str, Any]) -> None:
        """nats-server with compose's config file and the generated users (the fixture's port)."""
        config_mount = next(v for v in service["volumes"] if str(v).startswith("./"))
        source, target = str(config_mount).split(":")[:2]
        config = (ROOT / source).read_text()
        config = re.sub(r"(?m)^http_port:.*$", f"http_port: {free_port()}", config)
        config = re.sub(r"(?m)^\s*store_dir:.*$", "", config)  # the fixture's -sd: its store
        auth_mount = next(v for v in service["volumes"] if str(v).startswith("natsauth:"))
        auth_dir = str(auth_mount).split(":")[1]
        relative = Path(auth_dir).relative_to(Path(target).parent)
        # the fixture writes the config to <tmp>/nats-0/store.nats-server.conf: include from there
        folder = self.tmp / "nats-0" / relative
        folder.mkdir(parents=True)
        (folder / "users.conf").write_text(
            (self.tmp / "volumes" / "natsauth" / "users.conf").read_text()
        )
        login = {"user": "flowyard-server", "password": SECRETS["FLOWYARD_NATS_PASSWORD"]}
        factory(config=config, port=self.nats_port, connect_options=login)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def scrape(url: str) -> str:
    return httpx.get(url, timeout=5).text


def counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_compose_stack_runs_a_task_end_to_end(
    tmp_path: Path,
    pg_uri: str,
    nats_server_factory: Callable[..., NatsServer],
    flowyard_processes: ProcessGroup,
) -> None:
    services = interpolate(yaml.safe_load(COMPOSE.read_text())["services"], SECRETS)
    stack = Stack(tmp_path, pg_uri, flowyard_processes)
    for name in depends_order(services):
        service = services[name]
        if name == "postgres":
            continue  # the pg_uri fixture: a fresh database on the session's PostgreSQL
        if name == "nats":
            stack.start_nats(nats_server_factory, service)
        else:
            assert is_flowyard(service), f"{name}: no native stand-in for {service.get('image')}"
            stack.run_service(name, service)
    assert set(stack.processes) == {"server", "nats-worker", "db-worker"}

    with httpx.Client(base_url=stack.server_url, auth=ADMIN_AUTH, timeout=15) as client:
        ids = [
            client.post(
                "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0.1}}
            ).json()["id"]
            for _ in range(6)
        ]
        blur = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": json.dumps({"radius": 1})},
            files={"inputs": ("in.png", png(), "image/png")},
        )
        assert blur.status_code == 201, blur.text
        ids.append(blur.json()["id"])

        def all_succeeded() -> bool:
            states = {client.get(f"/api/tasks/{i}").json()["state"] for i in ids}
            assert not states & {"failed", "cancelled"}, states
            return states == {"succeeded"}

        wait_until(all_succeeded, 120, "every task to succeed", group=flowyard_processes)
        output = client.get(f"/api/tasks/{blur.json()['id']}/outputs/output.png")
        assert output.status_code == 200
        assert Image.open(io.BytesIO(output.content)).size == (16, 12)
        workers = client.get("/api/workers").json()["items"]
        assert {w["transport"] for w in workers if w["online"]} >= {"db", "nats"}
        assert client.get("/api/ready").status_code == 200
        token = client.post("/api/me/tokens", json={"name": "prometheus"}).json()["token"]
        server_metrics = httpx.get(
            f"{stack.server_url}/metrics", headers={"Authorization": f"Bearer {token}"}
        ).text
    assert (
        counter(
            server_metrics, 'flowyard_tasks_finished_total{flow="debug.sleep",status="succeeded"}'
        )
        == 6
    )
    ran = sum(
        counter(
            scrape(f"http://127.0.0.1:{stack.port(n, '9100')}/metrics"),
            "flowyard_worker_tasks_finished_total",
        )
        for n in ("nats-worker", "db-worker")
    )
    # a NATS worker may run a task a database worker claimed first (its claim is then
    # refused, and its result too): at least every task ran once
    assert ran >= len(ids)
    assert ADMIN_NAME in (tmp_path / "volumes" / "natsauth" / "users.conf").read_text()
    for process in stack.processes.values():
        assert "Traceback" not in process.log_text(), process.log_tail()
