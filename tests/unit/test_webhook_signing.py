"""Standard Webhooks signatures: the published test vector, round trips, and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from flowyard.adapters.webhook_sender import (
    generate_secret,
    parse_secret,
    sign,
    signed_headers,
    verify,
)
from flowyard.core.errors import InvalidInput

# The Standard Webhooks reference vector (the same in every reference library).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_sign_reproduces_the_published_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_sign_is_hmac_sha256_over_id_timestamp_body_with_the_decoded_key() -> None:
    key = base64.b64decode(VECTOR_SECRET.removeprefix("whsec_"))
    signed = f"{VECTOR_ID}.{VECTOR_TIMESTAMP}.{VECTOR_BODY}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY.encode()) == (
        f"v1,{expected}"
    )


def test_verify_accepts_the_vector_within_the_tolerance() -> None:
    assert verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 10)


def test_verify_accepts_any_matching_signature_of_several() -> None:
    headers = vector_headers(f"v1,bm9wZQ== v2,xyz {VECTOR_SIGNATURE}")
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


@pytest.mark.parametrize(
    ("secret", "headers", "body", "now"),
    [
        (generate_secret(), vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP),  # wrong secret
        (VECTOR_SECRET, vector_headers(), VECTOR_BODY + " ", VECTOR_TIMESTAMP),  # body changed
        (VECTOR_SECRET, vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP + 301),  # too old
        (VECTOR_SECRET, vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP - 301),  # from the future
        (VECTOR_SECRET, vector_headers("v1,AAAA"), VECTOR_BODY, VECTOR_TIMESTAMP),
        (VECTOR_SECRET, {"webhook-id": VECTOR_ID}, VECTOR_BODY, VECTOR_TIMESTAMP),
    ],
)
def test_verify_refuses(secret: str, headers: dict[str, str], body: str, now: int) -> None:
    assert not verify(secret, headers, body, now=now)


def test_headers_round_trip_and_header_names_are_case_insensitive() -> None:
    secret = generate_secret()
    body = '{"type":"task.done"}'
    headers = signed_headers(secret, "evt-1", body)
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(secret, {k.title(): v for k, v in headers.items()}, body.encode())


def test_generated_secrets_are_whsec_with_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(parse_secret(first)) == 32


@pytest.mark.parametrize(
    "secret", ["", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_AAAA"]
)
def test_malformed_secrets_are_refused_with_the_expected_form(secret: str) -> None:
    with pytest.raises(InvalidInput, match="whsec_") as info:
        parse_secret(secret)
    assert info.value.field == "secret"
