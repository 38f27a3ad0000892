"""The SSRF guard: which addresses a webhook may target, with and without the flag."""

from __future__ import annotations

import ipaddress

import pytest

from flowyard.adapters.webhook_guard import check_target, check_url, refusal
from flowyard.core.errors import InvalidInput

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
]
PUBLIC = ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://[::1]/hook",
        "http://localhost/hook",  # resolves to loopback
        "https://10.0.0.5/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:192.168.0.1]/",
    ],
)
async def test_check_target_refuses_by_default_and_names_the_flag(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await check_target(url, allow_private=False)
    assert info.value.field == "url"
    assert "loopback/private targets are refused" in info.value.message
    assert "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE=true" in info.value.message


async def test_check_target_allows_private_targets_with_the_flag() -> None:
    target = await check_target("http://127.0.0.1:9000/hook", allow_private=True)
    assert target.host == "127.0.0.1"
    assert target.address is None  # nothing pinned: private addresses are fine


async def test_a_public_literal_is_pinned_to_the_checked_address() -> None:
    target = await check_target("https://1.1.1.1/hook", allow_private=False)
    assert target.address == "1.1.1.1"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http:///nohost", "has no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
        ("example.com/hook", "http:// or https://"),
    ],
)
def test_malformed_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        check_url(url)
