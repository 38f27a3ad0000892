"""Standard Webhooks signing, and one HTTP attempt to deliver a signed event.

The format is https://www.standardwebhooks.com: the secret is ``whsec_`` plus
base64 key bytes; each request carries ``webhook-id`` (the event id, the same on
every retry so receivers can dedupe), ``webhook-timestamp`` (Unix seconds of
this attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``id.timestamp.body``). Receivers can verify with any Standard Webhooks library.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from flowyard.core.errors import InvalidInput

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TOLERANCE_SECONDS = 5 * 60
"""Receivers should refuse timestamps further off than this (replayed requests)."""
USER_AGENT = "flowyard-webhooks/1"
ERROR_BODY_BYTES = 300


def generate_secret() -> str:
    """A fresh ``whsec_<base64>`` secret with 32 random key bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The HMAC key inside ``whsec_<base64>``; anything else is refused with the expected form."""
    encoded = secret.removeprefix(SECRET_PREFIX) if secret.startswith(SECRET_PREFIX) else None
    try:
        key = base64.b64decode(encoded or "", validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if encoded is None or len(key) < 16 or len(key) > 64:
        raise InvalidInput(
            "secret: expected whsec_<base64 of 16 to 64 random bytes> (Standard Webhooks); "
            "leave it out to have one generated",
            field="secret",
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">`` with the secret's key bytes."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(parse_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: str | bytes,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """True when one of the ``webhook-signature`` entries matches and the timestamp is fresh.

    The header may hold several space-separated signatures (secret rotation); any
    ``v1`` one that matches is enough. Comparison is constant-time.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, given = (
        lower.get("webhook-id"),
        lower.get("webhook-timestamp"),
        lower.get("webhook-signature"),
    )
    if not msg_id or not stamp or not given or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(secret, msg_id, int(stamp), body).encode("ascii")
    return any(
        hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
        for candidate in given.split()
        if candidate.startswith("v1,")
    )


def signed_headers(
    secret: str, msg_id: str, body: str, timestamp: int | None = None
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to: a status code, or an error without one."""

    status_code: int | None
    error: str | None
    duration_ms: int


async def send(
    client: httpx.AsyncClient,
    url: str,
    *,
    secret: str,
    msg_id: str,
    body: str,
    deadline: float,
    connect_to: str | None = None,
) -> Attempt:
    """POST the signed body once, never following redirects, within ``deadline`` seconds.

    ``connect_to`` pins the connection to an address the SSRF guard already checked,
    so a DNS answer that changes between check and connect cannot redirect us.
    """
    request = client.build_request(
        "POST", url, content=body.encode("utf-8"), headers=signed_headers(secret, msg_id, body)
    )
    if connect_to is not None:
        request = _pinned(request, connect_to)
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                error = None if response.is_success else await _error_of(response)
            finally:
                await response.aclose()
    except TimeoutError:
        return Attempt(None, f"timed out after {deadline:g}s", _ms(started))
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}".rstrip(": "), _ms(started))
    return Attempt(response.status_code, error, _ms(started))


def _pinned(request: httpx.Request, address: str) -> httpx.Request:
    """Send to ``address`` while keeping the Host header and TLS name of the original URL."""
    original = request.url
    request.url = original.copy_with(host=address)
    request.headers["host"] = original.netloc.decode("ascii")
    if original.scheme == "https":
        request.extensions = {**request.extensions, "sni_hostname": original.host}
    return request


async def _error_of(response: httpx.Response) -> str:
    text = ""
    async for chunk in response.aiter_bytes():
        text += chunk.decode("utf-8", "replace")
        if len(text) >= ERROR_BODY_BYTES:
            break
    reason = f"HTTP {response.status_code}"
    if 300 <= response.status_code < 400:
        reason += " (redirects are not followed)"
    snippet = " ".join(text.split())[:ERROR_BODY_BYTES]
    return f"{reason}: {snippet}" if snippet else reason


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
