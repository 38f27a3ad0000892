"""Simulated hosts on one machine: network namespaces on a bridge, one veth pair each.

    network = Network.create()           # bridge fyb<id> with 10.X.Y.1/24
    alice = network.add_host("alice")    # namespace fy-<id>-alice, address 10.X.Y.2
    alice.command(["flowyard", "worker", ...])  # argv that runs inside the namespace
    alice.cut()                          # its link goes down: every packet is lost
    alice.restore()
    network.delay(alice, 20)             # tc netem on its link (or a delaying relay)
    network.destroy()                    # namespaces, veths and bridge, whatever happened

Servers bind to 127.0.0.1 and to the bridge address ``network.gateway`` only, so
a process in a namespace reaches them over its own link and nothing else (its
127.0.0.1 is its own loopback). Names are unique per network, so concurrent
tests never share a namespace or an interface.

Creating namespaces needs root (CAP_NET_ADMIN) and iproute2; ``NetnsUnavailable``
says which is missing. Tests turn it into a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port, parent_death_preexec, port_accepts

CIDR_PREFIX = 24
ROOT = Path(__file__).resolve().parents[2]


class NetnsUnavailable(RuntimeError):
    """This machine cannot create network namespaces (no privilege, no iproute2)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (bounded); raise with its stderr when ``check`` and it fails."""
    binary = shutil.which("ip")
    if binary is None:
        raise NetnsUnavailable("the 'ip' command is missing: apt-get install -y iproute2")
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=20, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def tc(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("tc")
    if binary is None:
        raise NetnsUnavailable("the 'tc' command is missing: apt-get install -y iproute2")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=20, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of this machine uses yet."""
    routes = ip("-4", "route", "show", "table", "all").stdout
    for _ in range(200):
        net = ipaddress.IPv4Network(
            f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/{CIDR_PREFIX}"
        )
        if str(net.network_address)[:-1] not in routes:
            return net
    raise RuntimeError("no free 10.200.0.0/13 subnet for the test network")


@dataclass
class Host:
    """One namespace: its name, its address, and both ends of its link."""

    name: str
    namespace: str
    address: str
    host_side: str
    inside: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Take the link down on the machine's side: the namespace keeps its address and
        routes, but every packet it sends or should receive is dropped (a pulled cable)."""
        ip("link", "set", self.host_side, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_side, "up")


@dataclass
class Network:
    id: str
    subnet: ipaddress.IPv4Network
    bridge: str
    hosts: list[Host] = field(default_factory=list)
    relays: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """The machine's address on the bridge: bind servers here (and to 127.0.0.1)."""
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls) -> Network:
        """A bridge with the gateway address; raises ``NetnsUnavailable`` without privilege."""
        net_id = uuid.uuid4().hex[:8]
        probe = f"fy-{net_id}-probe"
        result = ip("netns", "add", probe, check=False)
        if result.returncode != 0:
            raise NetnsUnavailable(
                f"cannot create a network namespace ('ip netns add' said: "
                f"{result.stderr.strip()}): run these tests as root (CAP_NET_ADMIN)"
            )
        ip("netns", "del", probe, check=False)
        network = cls(net_id, _free_subnet(), f"fyb{net_id}")
        try:
            ip("link", "add", network.bridge, "type", "bridge")
            ip("addr", "add", f"{network.gateway}/{CIDR_PREFIX}", "dev", network.bridge)
            ip("link", "set", network.bridge, "up")
        except BaseException:
            network.destroy()
            raise
        return network

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        host = Host(
            name=name,
            namespace=f"fy-{self.id}-{name}",
            address=str(self.subnet.network_address + 1 + index),
            host_side=f"fyh{self.id}{index}",
            inside=f"fyn{self.id}{index}",
        )
        self.hosts.append(host)  # before creating anything: destroy() removes what exists
        ns = host.namespace
        ip("netns", "add", ns)
        ip("link", "add", host.host_side, "type", "veth", "peer", "name", host.inside)
        ip("link", "set", host.inside, "netns", ns)
        ip("link", "set", host.host_side, "master", self.bridge)
        ip("link", "set", host.host_side, "up")
        ip("-n", ns, "addr", "add", f"{host.address}/{CIDR_PREFIX}", "dev", host.inside)
        ip("-n", ns, "link", "set", host.inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return host

    def netem_delay(self, host: Host, ms: int) -> bool:
        """``tc qdisc add dev <link> root netem delay MSms`` on both ends; False without netem
        (some kernels, e.g. Firecracker guests, are built without sch_netem)."""
        outside = tc("qdisc", "add", "dev", host.host_side, "root", "netem", "delay", f"{ms}ms")
        if outside.returncode != 0:
            return False
        rule = ["qdisc", "add", "dev", host.inside, "root", "netem", "delay", f"{ms}ms"]
        inside = subprocess.run(
            ["ip", "netns", "exec", host.namespace, "tc", *rule],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return inside.returncode == 0

    def relay(self, target_host: str, target_port: int, ms: float) -> int:
        """A port on the gateway forwarding to ``target``, every chunk ``ms`` late each way.

        The stand-in for netem on kernels without it (see ``tests.support.delay_relay``).
        """
        port = free_port()
        listen, target = f"{self.gateway}:{port}", f"{target_host}:{target_port}"
        argv = [sys.executable, "-m", "tests.support.delay_relay", "--listen", listen]
        argv += ["--target", target, "--delay-ms", str(ms)]
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=parent_death_preexec(),
        )
        self.relays.append(process)
        deadline = time.monotonic() + 15
        while not port_accepts(port, self.gateway):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the delay relay on {self.gateway}:{port} did not start")
            time.sleep(0.05)
        return port

    def destroy(self) -> None:
        """Remove every namespace, link and the bridge; never raises (a finalizer)."""
        for relay in self.relays:
            with contextlib.suppress(OSError):
                relay.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                relay.wait(timeout=5)
        for host in self.hosts:
            with contextlib.suppress(RuntimeError, NetnsUnavailable, subprocess.SubprocessError):
                ip("link", "del", host.host_side, check=False)
                ip("netns", "del", host.namespace, check=False)
        with contextlib.suppress(RuntimeError, NetnsUnavailable, subprocess.SubprocessError):
            ip("link", "del", self.bridge, check=False)


def open_network() -> Network:
    """``Network.create()`` for a test: without privilege the test fails, saying why.

    Never a skip: CI runs as root, so a machine that cannot do this is broken.
    """
    try:
        return Network.create()
    except NetnsUnavailable as exc:
        pytest.fail(f"network namespace tests cannot run on this machine: {exc}", pytrace=False)


def leftovers(network: Network) -> list[str]:
    """Namespaces and links of ``network`` that still exist (for the cleanup test)."""
    names = ip("netns", "list").stdout + ip("-o", "link", "show").stdout
    candidates = [network.bridge] + [h.namespace for h in network.hosts]
    candidates += [h.host_side for h in network.hosts]
    return [name for name in candidates if name in names]
