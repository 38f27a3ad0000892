"""Built-in TLS: ``flowyard serve`` with a certificate made here (openssl)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.processes import ProcessError, ProcessGroup

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command"),
]


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def wait_https(url: str, cert: Path, group: ProcessGroup, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", verify=trusting(cert), timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise ProcessError(f"no HTTPS answer at {url}\n{group.tails()}")


def test_serve_speaks_tls_with_the_given_certificate(
    flowyard_processes: ProcessGroup, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {"FLOWYARD_TLS_CERT_FILE": str(cert), "FLOWYARD_TLS_KEY_FILE": str(key)}
    server = flowyard_processes.start_server(
        ["--data-dir", str(tmp_path / "data"), "--port", str(port)], env=env
    )
    url = f"https://127.0.0.1:{port}"
    wait_https(url, cert, flowyard_processes)
    with httpx.Client(base_url=url, verify=trusting(cert), timeout=10) as client:
        assert client.get("/api/health").json()["status"] == "ok"
        created = client.post("/api/tasks", json={"flow": "debug.sleep", "params": {}})
        assert created.status_code == 201
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2)  # no plain HTTP beside it
    server.wait_for_log(r"default mode on https://127\.0\.0\.1")


def test_a_bad_key_is_one_line(flowyard_processes: ProcessGroup, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    wrong = tmp_path / "wrong.pem"
    wrong.write_text("not a key\n")
    env = {"FLOWYARD_TLS_CERT_FILE": str(cert), "FLOWYARD_TLS_KEY_FILE": str(wrong)}
    server = flowyard_processes.start_server(["--data-dir", str(tmp_path / "data")], env=env)
    assert server.wait(timeout=30) == 1
    log = server.log_text()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1].startswith("error: setting tls_cert_file/tls_key_file")
