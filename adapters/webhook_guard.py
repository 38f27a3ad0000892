"""SSRF guard: webhook targets must be public addresses unless the operator allows otherwise.

A webhook makes the server send requests wherever a user points it, so by default
targets that resolve to loopback, private, link-local (cloud metadata at
169.254.169.254 and fd00:ec2::254), multicast, reserved or unspecified addresses
are refused, IPv4 inside IPv6 (``::ffff:10.0.0.1``, 6to4, Teredo) included. The
check runs when a subscription is created and again before every send, because
DNS answers change; the sender then connects to the address that was checked.
``FLOWYARD_WEBHOOKS_ALLOW_PRIVATE=true`` turns the guard off (trusted LANs, tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from flowyard.core.errors import InvalidInput

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
ALLOW_HINT = "set FLOWYARD_WEBHOOKS_ALLOW_PRIVATE=true to allow"
RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    """A checked URL and, when the guard resolved it, the address to connect to."""

    url: str
    host: str
    address: str | None = None


def check_url(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of an acceptable webhook URL (http/https, a host, no fragment)."""
    if len(url) > 2000:
        raise InvalidInput("url: longer than 2000 characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url: not a valid URL ({exc})", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"url: must be http:// or https://, got {url!r}", field="url")
    if not parts.hostname:
        raise InvalidInput(f"url: has no host: {url!r}", field="url")
    try:  # getaddrinfo raises UnicodeError, not OSError, for a label over 63 characters
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise InvalidInput(f"url: not a valid host name ({exc})", field="url") from None
    if parts.username or parts.password:
        raise InvalidInput("url: credentials in the URL are not allowed", field="url")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refusal(address: IpAddress) -> str | None:
    """Why ``address`` is not a public target, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            return refusal(embedded)
    if address in METADATA:
        return "a cloud metadata address"
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not address.is_global:
        return "not a public address"
    return None


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (getaddrinfo runs in a thread, bounded in time)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise InvalidInput(f"url: cannot resolve host {host!r} ({exc})", field="url") from None
    found: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


async def check_target(url: str, *, allow_private: bool) -> Target:
    """Refuse ``url`` unless every address it resolves to is public (or private ones are allowed).

    All addresses must pass, not just one: the client may connect to any of them.
    """
    _, host, port = check_url(url)
    if allow_private:
        return Target(url, host)
    addresses = await resolve(host, port)
    if not addresses:
        raise InvalidInput(f"url: host {host!r} has no addresses", field="url")
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            raise InvalidInput(
                f"url: loopback/private targets are refused: {host} is {address}, {reason} "
                f"({ALLOW_HINT})",
                field="url",
            )
    return Target(url, host, str(addresses[0]))
