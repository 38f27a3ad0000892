"""The request's principal, as FastAPI dependencies (AUTH_READY: the server side is live).

Every router but health declares ``Depends(principal)``, so a route cannot be
added without authentication by forgetting it. Credentials are read in this
order: ``Authorization: Basic`` (name and password), ``Authorization: Bearer``
(an API token), then the session cookie of the web UI; a state-changing
request authenticated by the cookie must carry ``X-CSRF-Token``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from flowyard.core.errors import Forbidden, Unauthenticated
from flowyard.core.identity import Principal
from flowyard.services.auth_service import Authenticator, csrf_matches

SESSION_COOKIE = "flowyard_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.runtime.auth
    return auth


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def principal(request: Request) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth = await authenticator(request)
    found = auth.local if not auth.required else await _authenticate(request, auth)
    request.state.principal = found
    return found


async def _authenticate(request: Request, auth: Authenticator) -> Principal:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            name, password = parse_basic(value)
            user = await auth.password(name, password, client_address(request))
            return user.principal
        if scheme.lower() == "bearer" and value:
            return await auth.token(value, client_address(request))
        raise Unauthenticated("Authorization: use 'Basic <name:password>' or 'Bearer <token>'")
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        found = await auth.session(session)
        if request.method not in SAFE_METHODS and not csrf_matches(
            session, request.headers.get(CSRF_HEADER)
        ):
            raise Forbidden(
                "CSRF check failed: a signed-in browser request that changes something must "
                "send the X-CSRF-Token header the login gave"
            )
        return found
    raise Unauthenticated()


def parse_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("Authorization: Basic credentials are not valid base64") from None
    name, sep, password = decoded.partition(":")
    if not sep or not name:
        raise Unauthenticated("Authorization: Basic credentials must be 'name:password'")
    if "\x00" in decoded:  # PostgreSQL refuses NUL in text: no such user can exist
        raise Unauthenticated("Authorization: Basic credentials must not contain NUL")
    return name, password


async def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    if not caller.is_admin:
        raise Forbidden(f"only an admin may do this (you are {caller.name!r})")
    return caller


Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
