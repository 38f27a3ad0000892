"""Users, roles and who may see what, as pure values and rules (no hashing, no I/O).

A request is made by a ``Principal``: an admin sees and acts on everything, a
user only on what they own. Someone else's object is reported exactly as a
missing one, so ids cannot be probed. Hashing lives in ``adapters/passwords.py``
and storage in ``adapters/sql/user_store.py``; the throttle of failed sign-ins
is ``FailureLimiter`` here, fed a clock by its caller.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from flowyard.core.errors import Forbidden, InvalidInput, TooManyAttempts, WeakPassword

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Letters, digits, ``_`` and ``-``: safe as a NATS subject token, a bucket name and a path."""

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
TOKEN_PREFIX = "fyt_"


class Role(StrEnum):
    admin = "admin"
    user = "user"


@dataclass(frozen=True)
class Principal:
    """Who a request or a worker acts as."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin

    def sees(self, owner: str) -> bool:
        """An admin sees every owner's objects; a user only their own."""
        return self.is_admin or owner == self.name

    def owner_filter(self) -> str | None:
        """The owner a listing is restricted to (None: every owner)."""
        return None if self.is_admin else self.name

    def owner_for(self, requested: str | None) -> str:
        """The owner of a new object: oneself, or anyone when an admin asks for it."""
        if requested is None or requested == self.name:
            return self.name
        if not self.is_admin:
            raise Forbidden(
                f"owner: only an admin may act on behalf of another user (you are {self.name!r})"
            )
        return check_user_name(requested, field="owner")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None = None

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role)


class TokenKind(StrEnum):
    api = "api"
    session = "session"


@dataclass(frozen=True)
class ApiToken:
    """A token's metadata; the secret itself is shown once, when it is made, and never stored."""

    id: str
    user: str
    name: str
    kind: TokenKind
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def check_user_name(name: str, *, field: str = "name") -> str:
    if not USER_NAME.fullmatch(name):
        raise InvalidInput(
            f"{field}: {name[:80]!r} is not a valid user name (1 to 64 letters, digits, "
            "'_' or '-', starting with a letter or digit)",
            field=field,
        )
    return name


def check_password(password: str, *, user: str) -> str:
    """A password good enough to guard a shared server; the reason is named when it is not."""
    if not password.strip():
        raise WeakPassword("password: must not be empty", field="password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(
            f"password: too short, use at least {MIN_PASSWORD_LENGTH} characters",
            field="password",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(
            f"password: longer than {MAX_PASSWORD_LENGTH} characters", field="password"
        )
    if password.lower() == user.lower() or len(set(password)) < 3:
        raise WeakPassword("password: too easy to guess", field="password")
    return password


def new_token_id() -> str:
    return uuid.uuid4().hex[:16]


def token_id_of(secret: str) -> str | None:
    """The public id inside ``fyt_<id>_<secret>`` (None when it is not a flowyard token)."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, rest = secret[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not rest or len(token_id) != 16:
        return None
    return token_id


@dataclass
class FailureLimiter:
    """At most ``limit`` failed sign-ins per key in any ``window`` seconds.

    Keys are a user name or a client address; once a key is over its limit
    every attempt is refused (even a right password) until old failures age
    out, so guessing costs ``window / limit`` seconds per try. Memory is
    bounded by ``max_keys``: the oldest key is forgotten first.
    """

    limit: int = 10
    window: float = 60.0
    max_keys: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def check(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= self.limit:
                wait = max(1.0, self.window - (now - times[0]))
                raise TooManyAttempts(
                    f"too many failed sign-ins; try again in {wait:.0f} s", retry_after=wait
                )

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            times = self._failures.pop(key, None) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[key] = times  # re-inserted: most recently failed last
        while len(self._failures) > self.max_keys:
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
