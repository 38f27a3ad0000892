"""Fixtures for simulated hosts: a network of namespaces, and servers bound to its gateway.

A machine that cannot create namespaces fails these tests with the reason
(CI runs as root, so a skip would hide a broken setup).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import NatsServer
from tests.support.netns import Network, leftovers, open_network
from tests.support.postgres import PostgresCluster


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge with the machine's address on it; hosts are added by the test."""
    net = open_network()
    try:
        yield net
    finally:
        net.destroy()
        left = leftovers(net)
        assert not left, f"network namespaces or links left behind: {left}"


@pytest.fixture
def pg_on_network(
    network: Network, tmp_path: Path, pg_initdb_template: Path
) -> Iterator[PostgresCluster]:
    """PostgreSQL on 127.0.0.1 and the gateway, trusting the network's hosts."""
    cluster = PostgresCluster(
        tmp_path / "pg",
        initdb_from=pg_initdb_template,
        settings={"synchronous_commit": "on"},
        listen=("127.0.0.1", network.gateway),
        trust=(str(network.subnet),),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop(timeout=10)
        finally:
            cluster.kill()
            shutil.rmtree(cluster.data_dir, ignore_errors=True)


@pytest.fixture
def nats_on_network(network: Network, tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server bound to the gateway only: every client comes over a link."""
    server = NatsServer(tmp_path / "nats" / "store", host=network.gateway)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop(timeout=10)
        finally:
            server.kill()
