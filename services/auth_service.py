"""Credentials to a ``Principal``: passwords, API tokens and web sessions, throttled.

One object per server process. When authentication is off (the default mode on
loopback) every caller is the local admin; otherwise a caller proves who they
are with a password (HTTP Basic or the login form), an API token (Bearer) or
the session a login made (a cookie; unsafe requests from a cookie also carry a
CSRF token derived from it, so another site cannot borrow the session).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from flowyard.core.errors import ConfigError, Unauthenticated, UserNotFound
from flowyard.core.events import utcnow
from flowyard.core.identity import FailureLimiter, Principal, Role, TokenKind, User, token_id_of
from flowyard.core.ports import UserStore
from flowyard.core.settings import Settings

log = logging.getLogger(__name__)

WRONG_PASSWORD = "wrong user name or password"
BAD_TOKEN = "the token is unknown, expired or revoked: create a new one ('flowyard login')"
BAD_SESSION = "your sign-in has expired or was ended: sign in again"
VERIFIED_SECONDS = 30.0
"""A right password is remembered this long (argon2 costs ~50 ms a check, by design),
so a script sending Basic on every request stays fast. The user row is still read
each time, so disabling or removing a user takes effect at once; an old password
stays usable for at most this long after a change."""


def csrf_token(session_secret: str) -> str:
    """Bound to one session, so a token leaked from another session does not help."""
    return hmac.new(session_secret.encode(), b"flowyard-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_secret: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(csrf_token(session_secret), sent)


class Authenticator:
    def __init__(
        self,
        users: UserStore,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.required = settings.auth_required
        self.local = Principal(settings.default_owner, Role.admin)
        self.session_lifetime = timedelta(hours=settings.session_hours)
        self.cookie_secure = settings.cookie_secure or settings.tls_enabled
        self.limiter = FailureLimiter(limit=settings.login_attempts)
        self._clock = clock
        self._verified: dict[str, tuple[User, float]] = {}

    async def bootstrap(self, settings: Settings) -> None:
        """Refuse to serve a network with nobody able to administer it."""
        if not self.required or await self.users.count_admins() > 0:
            return
        if settings.admin_password is None:
            raise ConfigError(
                "authentication is on (server mode, or a non-loopback --host) but there is no "
                "admin user: run 'flowyard users create NAME --admin --db URI' first, or set "
                "FLOWYARD_ADMIN_PASSWORD once to create the user "
                f"{settings.admin_user!r}"
            )
        await self.users.create(
            settings.admin_user, settings.admin_password.get_secret_value(), Role.admin
        )
        log.warning("created admin user %r from FLOWYARD_ADMIN_PASSWORD", settings.admin_user)

    async def password(self, name: str, password: str, client: str) -> User:
        now = self._clock()
        keys = (f"user:{name.lower()}", f"addr:{client}")
        self.limiter.check(keys, now)  # first: a throttled guesser learns nothing, even if right
        memo = hashlib.sha256(f"{name}\0{password}".encode()).hexdigest()
        remembered = self._verified.pop(memo, None)
        if remembered is not None and now < remembered[1]:
            current = await self._current(name)
            if current is not None:
                self._verified[memo] = (current, remembered[1])
                return current
        user = await self.users.check_password(name, password)
        if user is None:
            self.limiter.failed(keys, now)
            raise Unauthenticated(WRONG_PASSWORD)
        self.limiter.succeeded(keys[0])
        if len(self._verified) >= 1000:
            self._verified.clear()
        self._verified[memo] = (user, now + VERIFIED_SECONDS)
        return user

    async def _current(self, name: str) -> User | None:
        try:
            user = await self.users.get(name)
        except UserNotFound:
            return None
        return None if user.disabled else user

    async def token(self, secret: str, client: str) -> Principal:
        """An API token; a malformed one costs a throttle slot like a wrong password."""
        keys = (f"addr:{client}",)
        self.limiter.check(keys, self._clock())
        found = None
        if token_id_of(secret) is not None:
            found = await self.users.authenticate_token(secret, utcnow())
        if found is None or found[0].kind is not TokenKind.api:
            self.limiter.failed(keys, self._clock())
            raise Unauthenticated(BAD_TOKEN)
        return found[1].principal

    async def session(self, secret: str) -> Principal:
        found = await self.users.authenticate_token(secret, utcnow())
        if found is None or found[0].kind is not TokenKind.session:
            raise Unauthenticated(BAD_SESSION)
        return found[1].principal

    async def open_session(self, user: User) -> str:
        """A new session secret (the cookie's value); only its digest is stored."""
        _, secret = await self.users.create_token(
            user.name,
            name="web session",
            kind=TokenKind.session,
            expires_at=utcnow() + self.session_lifetime,
        )
        return secret

    async def close_session(self, secret: str) -> None:
        found = await self.users.authenticate_token(secret, utcnow())
        if found is not None and found[0].kind is TokenKind.session:
            await self.users.revoke_token(found[0].id)
