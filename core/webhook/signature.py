"""Verify a Stripe webhook delivery: the signature on the raw bytes, then the event's shape.

Pure: raw bytes and a header in, a parsed event or a classified `Rejection` out; nothing is
stored here (the shape of stripe-python's `WebhookSignature`, with stricter checks: the
tolerance applies both ways, every reason is classified, and nothing is decoded before the
signature matches).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 256 * 1024


SIGNATURE_SCHEME = "v1"


MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold


class Rejection(Exception):
    """A delivery that is not a verified, well-formed Stripe event. `reason` is a short code."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


# The complete list of rejection reasons, with the message a caller may see.
REASONS: dict[str, str] = {
    "missing_header": "No Stripe-Signature header.",
    "malformed_header": "The Stripe-Signature header is not of the form t=...,v1=....",
    "no_v1_signature": "The Stripe-Signature header has no v1 signature.",
    "no_matching_signature": "No signature matches the payload for any configured secret.",
    "timestamp_too_old": "The signature's timestamp is older than the tolerance.",
    "timestamp_in_future": "The signature's timestamp is further in the future than the tolerance.",
    "body_not_utf8": "The body is not valid UTF-8.",
    "invalid_json": "The body is not valid JSON.",
    "not_an_event": "The body is not a Stripe event object.",
    "unsupported_event_format": "Thin (v2) events are not supported by this endpoint.",
    "body_too_large": f"The body is larger than {MAX_BODY_BYTES} bytes.",
}


def _reject(reason: str, status: int = 400) -> Rejection:
    return Rejection(reason, REASONS[reason], status)


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    v1: tuple[str, ...]


def parse_signature_header(header: str | None) -> SignatureHeader:
    if header is None or not header.strip():
        raise _reject("missing_header")
    if not header.isascii() or len(header) > 4096:
        raise _reject("malformed_header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise _reject("malformed_header")
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise _reject("malformed_header")
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME:
            signatures.append(value.strip())
    if timestamp is None:
        raise _reject("malformed_header")
    if not signatures:
        raise _reject("no_v1_signature")
    return SignatureHeader(timestamp, tuple(signatures))


def compute_signature(secret: str, timestamp: int, payload: bytes) -> str:
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header value for `payload` (tests, the demo and benchmarks)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},{SIGNATURE_SCHEME}={compute_signature(secret, ts, payload)}"


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    tolerance: int,
    now: float | None = None,
) -> dict[str, Any]:
    """Return the verified event, or raise Rejection with the reason.

    Checks every secret (rotation), applies the tolerance to stale *and* future timestamps,
    and turns every malformed input into a Rejection, never another exception."""
    if not secrets:
        raise ValueError("no webhook secret configured")
    if tolerance <= 0:
        raise ValueError("tolerance must be positive")
    if len(payload) > MAX_BODY_BYTES:
        raise _reject("body_too_large", 413)
    parsed = parse_signature_header(header)
    expected = [compute_signature(secret, parsed.timestamp, payload) for secret in secrets]
    if not any(
        hmac.compare_digest(candidate.encode("ascii"), wanted.encode("ascii"))
        for candidate in parsed.v1
        for wanted in expected
    ):
        raise _reject("no_matching_signature")
    current = time.time() if now is None else now
    if parsed.timestamp < current - tolerance:
        raise _reject("timestamp_too_old")
    if parsed.timestamp > current + tolerance:
        raise _reject("timestamp_in_future")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject("body_not_utf8") from None
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise _reject("invalid_json") from None
    return check_event_shape(event)


def check_event_shape(event: Any) -> dict[str, Any]:
    """The fields the webhook path relies on, with their types."""
    if not isinstance(event, dict):
        raise _reject("not_an_event")
    if event.get("object") == "v2.core.event" or (
        "related_object" in event and "data" not in event
    ):
        raise _reject("unsupported_event_format")
    data = event.get("data")
    if (
        event.get("object") != "event"
        or not isinstance(event.get("id"), str)
        or not event["id"].startswith("evt_")
        or len(event["id"]) > 255
        or not isinstance(event.get("type"), str)
        or not event["type"]
        or len(event["type"]) > 255
        or not isinstance(event.get("created"), int)
        or isinstance(event.get("created"), bool)
        or not 0 < event["created"] <= MAX_CREATED  # else datetime() fails: a 500 forever
        or not isinstance(event.get("livemode"), bool)
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise _reject("not_an_event")
    return event
