"""Credentials for the client: a bearer token, and the rule that they stay on one origin.

Credentials (any ``httpx.Auth``) go with every request, streams and downloads
included, but only to the server's own scheme, host and port: an output URL that
points elsewhere never receives them.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; ``stored`` marks a token saved by ``flowyard login``.

    ``stored`` only changes what a 401 says: such a token may have expired or been
    revoked since, and signing in again is the fix.
    """

    def __init__(self, token: str, *, stored: bool = False) -> None:
        self.token = token
        self.stored = stored

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request

    def __repr__(self) -> str:  # never the secret, not even in a traceback
        return f"BearerAuth(stored={self.stored})"


class SameOriginAuth(httpx.Auth):
    """Applies ``inner`` only to requests for the server's own scheme, host and port."""

    def __init__(self, inner: httpx.Auth, server: str) -> None:
        self._inner = inner
        self._origin = _origin(httpx.URL(server))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            yield from self._inner.auth_flow(request)
        else:
            yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port
