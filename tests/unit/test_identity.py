"""Users, principals, passwords, token ids and the sign-in throttle, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flowyard.core.errors import Forbidden, InvalidInput, TooManyAttempts, WeakPassword
from flowyard.core.identity import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    TOKEN_PREFIX,
    ApiToken,
    FailureLimiter,
    Principal,
    Role,
    TokenKind,
    check_password,
    check_user_name,
    new_token_id,
    token_id_of,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("name", ["alice", "a", "Bob-2", "ci_runner", "0day", "x" * 64])
def test_good_user_names_pass(name: str) -> None:
    assert check_user_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-alice", "_alice", "al ice", "al.ice", "a/b", "alice@host", "é", "x" * 65, "a\n"],
)
def test_odd_user_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_user_name(name, field="owner")
    assert caught.value.field == "owner"
    assert caught.value.message.startswith("owner: ")


def test_a_very_long_name_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_user_name("!" * 10_000)
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("", "must not be empty"),
        ("     \t  ", "must not be empty"),
        ("short", "too short"),
        ("x" * (MIN_PASSWORD_LENGTH - 1), "too short"),
        ("y" * (MAX_PASSWORD_LENGTH + 1), "longer than"),
        ("aaaaaaaaaaaa", "too easy"),
        ("abababababab", "too easy"),
        ("AliceSmith", "too easy"),  # the user's own name, in any case
    ],
)
def test_weak_passwords_are_refused_with_the_reason(password: str, words: str) -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password(password, user="alicesmith")
    assert words in caught.value.message
    assert caught.value.field == "password"
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize(
    "password", ["correct horse", "x" * MIN_PASSWORD_LENGTH + "yz", "z" * 1000 + "ab"]
)
def test_good_passwords_pass(password: str) -> None:
    assert check_password(password, user="alice") == password


def test_token_ids_are_16_hex_and_fresh() -> None:
    ids = {new_token_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_token_id_of_reads_the_public_part() -> None:
    token_id = new_token_id()
    assert token_id_of(f"{TOKEN_PREFIX}{token_id}_s3cr3t_with_underscores") == token_id


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "Bearer fyt_0123456789abcdef_x",
        "fyt_",
        "fyt_0123456789abcdef",  # no secret part
        "fyt_0123456789abcdef_",  # empty secret part
        "fyt_0123456789abcde_secret",  # 15 characters
        "fyt_0123456789abcdef0_secret",  # 17 characters
        "ghp_0123456789abcdef_secret",
    ],
)
def test_token_id_of_rejects_what_is_not_a_flowyard_token(secret: str) -> None:
    assert token_id_of(secret) is None


def test_principals_see_their_own_and_admins_everything() -> None:
    admin = Principal("root", Role.admin)
    alice = Principal("alice", Role.user)
    assert admin.is_admin
    assert not alice.is_admin
    assert admin.sees("alice")
    assert admin.sees("bob")
    assert alice.sees("alice")
    assert not alice.sees("bob")
    assert admin.owner_filter() is None
    assert alice.owner_filter() == "alice"


def test_only_admins_act_on_behalf_of_others() -> None:
    admin = Principal("root", Role.admin)
    alice = Principal("alice", Role.user)
    assert alice.owner_for(None) == "alice"
    assert alice.owner_for("alice") == "alice"
    assert admin.owner_for("bob") == "bob"
    with pytest.raises(Forbidden):
        alice.owner_for("bob")
    with pytest.raises(InvalidInput) as caught:
        admin.owner_for("no such/user")
    assert caught.value.field == "owner"


def test_token_usable_until_it_expires_or_is_revoked() -> None:
    token = ApiToken("0123456789abcdef", "alice", "ci", TokenKind.api, NOW)
    assert token.usable(NOW + timedelta(days=3650))
    expiring = ApiToken(
        "0123456789abcdef", "alice", "ci", TokenKind.api, NOW, expires_at=NOW + timedelta(hours=1)
    )
    assert expiring.usable(NOW + timedelta(minutes=59))
    assert not expiring.usable(NOW + timedelta(hours=1))
    revoked = ApiToken("0123456789abcdef", "alice", "ci", TokenKind.api, NOW, revoked_at=NOW)
    assert not revoked.usable(NOW)


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_limiter_refuses_after_limit_failures_until_they_age_out() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=3, window=60.0)
    keys = ("alice", "10.0.0.1")
    for _ in range(3):
        limiter.check(keys, clock.now)
        limiter.failed(keys, clock.now)
        clock.advance(1)
    with pytest.raises(TooManyAttempts) as caught:
        limiter.check(keys, clock.now)
    assert 55 <= caught.value.retry_after <= 60
    assert "try again in" in caught.value.message
    clock.advance(57)  # the first failure is now 60 s old
    limiter.check(keys, clock.now)


def test_limiter_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=2, window=10.0)
    limiter.failed(("alice", "10.0.0.1"), clock.now)
    limiter.failed(("alice", "10.0.0.2"), clock.now)
    with pytest.raises(TooManyAttempts):
        limiter.check(("alice",), clock.now)
    limiter.check(("bob", "10.0.0.1"), clock.now)  # one failure each: still allowed


def test_limiter_success_forgets_that_key_only() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=2, window=10.0)
    limiter.failed(("alice", "10.0.0.1"), clock.now)
    limiter.failed(("alice", "10.0.0.1"), clock.now)
    limiter.succeeded("alice")
    limiter.check(("alice",), clock.now)
    with pytest.raises(TooManyAttempts):
        limiter.check(("alice", "10.0.0.1"), clock.now)


def test_limiter_retry_after_is_at_least_a_second() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=1, window=5.0)
    limiter.failed(("k",), clock.now)
    clock.advance(4.9)
    with pytest.raises(TooManyAttempts) as caught:
        limiter.check(("k",), clock.now)
    assert caught.value.retry_after == 1.0


def test_limiter_memory_is_bounded_oldest_key_first() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=1, window=60.0, max_keys=3)
    for key in ("a", "b", "c", "d"):
        limiter.failed((key,), clock.advance(1))
    limiter.check(("a",), clock.now)  # forgotten
    for key in ("b", "c", "d"):
        with pytest.raises(TooManyAttempts):
            limiter.check((key,), clock.now)


def test_limiter_failing_again_keeps_a_key_from_being_evicted() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=1, window=60.0, max_keys=2)
    limiter.failed(("a",), clock.advance(1))
    limiter.failed(("b",), clock.advance(1))
    limiter.failed(("a",), clock.advance(1))  # "a" is now the most recent
    limiter.failed(("c",), clock.advance(1))  # evicts "b"
    limiter.check(("b",), clock.now)
    with pytest.raises(TooManyAttempts):
        limiter.check(("a",), clock.now)
