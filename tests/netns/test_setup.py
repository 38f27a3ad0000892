"""The simulated-hosts setup itself: it fails loudly without privilege and leaves nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import netns
from tests.support.netns import Network, leftovers, open_network

pytestmark = pytest.mark.netns


def test_without_privilege_the_test_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            ["ip", *args], 1, "", "mount --make-shared /run/netns failed: Operation not permitted"
        )

    monkeypatch.setattr(netns, "ip", refused)
    with pytest.raises(pytest.fail.Exception) as failed:  # a failure, not a skip
        open_network()
    assert "as root (CAP_NET_ADMIN)" in str(failed.value)
    assert "Operation not permitted" in str(failed.value)


def test_a_host_reaches_the_gateway_only_over_its_link_and_everything_is_removed() -> None:
    network = open_network()
    try:
        host = network.add_host("probe")
        ping = [
            "python3",
            "-c",
            "import socket,sys; socket.create_connection((sys.argv[1], 9), 1)",
        ]

        def reaches(address: str) -> str:
            result = subprocess.run(
                host.command([*ping, address]), capture_output=True, text=True, timeout=20
            )
            return result.stderr.strip().splitlines()[-1] if result.returncode else "connected"

        # nothing listens on port 9: refused means the packet arrived, a timeout that it did not
        assert "refused" in reaches(network.gateway).lower()
        host.cut()
        assert "refused" not in reaches(network.gateway).lower()
        host.restore()
        assert "refused" in reaches(network.gateway).lower()
    finally:
        network.destroy()
    assert leftovers(network) == []


def test_destroy_is_safe_on_a_half_built_network() -> None:
    network = open_network()
    network.hosts.append(
        netns.Host("ghost", f"fy-{network.id}-ghost", "10.0.0.9", "fyhnone", "fynnone")
    )
    network.destroy()
    assert leftovers(network) == []
    assert isinstance(network, Network)
