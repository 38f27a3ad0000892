"""Password and token hashing: argon2id for sign-in, bcrypt for NATS, sha256 for tokens.

Three hashes on purpose. Passwords are low-entropy, so they get argon2id (slow,
memory-hard). nats-server checks passwords itself and only understands bcrypt,
so a second, bcrypt hash of the same secret is kept for it. API tokens are 256
random bits: guessing is hopeless whatever the hash, so a fast sha256 digest is
right, and it lets a token be looked up by its digest in one indexed query.

All of these are CPU-bound (tens of milliseconds); async callers run them in a
thread.
"""

from __future__ import annotations

import functools
import hashlib
import secrets

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from flowyard.core.identity import TOKEN_PREFIX

NATS_BCRYPT_COST = 11
NATS_MAX_BYTES = 72
"""bcrypt reads at most 72 bytes; longer secrets get no NATS hash (nats-server refuses them too)."""

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash with the library's current default parameters."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Whether ``password`` matches; False for a wrong password or a malformed hash."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError, ValueError, TypeError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's defaults."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def burn_verify(password: str) -> None:
    """Spend the time of one verification, so an unknown user answers as slowly as a known one."""
    verify_password(_dummy_hash(), password)


def nats_hashable(secret: str) -> bool:
    """Whether bcrypt (and so nats-server) can take this secret whole."""
    return len(secret.encode("utf-8")) <= NATS_MAX_BYTES


def nats_password_hash(secret: str) -> str:
    """A bcrypt hash (``$2b$11$...``) for nats-server's config; ValueError over 72 bytes."""
    raw = secret.encode("utf-8")
    if len(raw) > NATS_MAX_BYTES:
        raise ValueError(f"bcrypt takes at most {NATS_MAX_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=NATS_BCRYPT_COST)).decode("ascii")


def token_digest(secret: str) -> str:
    """The sha256 hex digest a token is stored and looked up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_token(token_id: str) -> str:
    """A new secret ``fyt_<id>_<43 url-safe characters>`` (256 random bits)."""
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
