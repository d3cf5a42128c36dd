"""Verify Stripe webhook deliveries, record every one, apply every event exactly once.

`verify` is pure: raw bytes and a header in, a parsed event or a classified rejection out.
`receive` is the whole webhook path of DESIGN.md: one transaction inserts the event, applies
its handler and writes the delivery row; a duplicate changes nothing; a handler error rolls
back and leaves a failed delivery row. No network call happens here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from core.db import JSONText, Prepared, hot_path, insert_ignore, raw, session_scope
from core.handlers import HANDLERS, Context
from core.models import StripeEvent, WebhookDelivery

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
_INSERT_DELIVERY = Prepared(insert(WebhookDelivery.__table__))  # type: ignore[arg-type]
_EVENTS = StripeEvent.__table__
# Another delivery of a stored event: counted, its row locked; its status says what to do.
_COUNT_DELIVERY = Prepared(
    update(_EVENTS)  # type: ignore[arg-type]
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(deliveries=_EVENTS.c.deliveries + 1)
    .returning(_EVENTS.c.status)
)
_REAPPLIED = Prepared(
    update(_EVENTS)  # type: ignore[arg-type]
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(
        source=bindparam("source"),
        status=bindparam("status"),
        processed_at=bindparam("processed_at"),
        last_error=bindparam("last_error"),
    )
)
_FAILED_AGAIN = Prepared(
    update(_EVENTS)  # type: ignore[arg-type]
    .where(_EVENTS.c.id == bindparam("event_id"), _EVENTS.c.status == "failed")
    .values(last_error=bindparam("last_error"))
)
SIGNATURE_SCHEME = "v1"
MAX_ERROR_CHARS = 500
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


# --- Recording and applying --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the receiver answers: an HTTP status and a small JSON body."""

    status: int
    result: str
    reason: str | None = None
    event_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"result": self.result}
        if self.reason:
            body["reason"] = self.reason
        if self.event_id:
            body["event_id"] = self.event_id
        return body


def _insert_ignore(session: Session, values: dict[str, Any]) -> bool:
    return insert_ignore(session, StripeEvent, values, ["id"])


def _count_delivery(session: Session, event_id: str) -> str:
    """Count one more delivery of a stored event (row-locked until commit); its status."""
    return str(raw(session).rows(_COUNT_DELIVERY, {"event_id": event_id})[0][0])


def _event_row(
    event: dict[str, Any], source: str, now: datetime, body: str | None
) -> dict[str, Any]:
    obj = event["data"]["object"]
    return {
        "id": event["id"],
        "type": event["type"],
        "created": datetime.fromtimestamp(event["created"], UTC),
        "livemode": event["livemode"],
        "api_version": event.get("api_version")
        if isinstance(event.get("api_version"), str)
        else None,
        "object_id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "status": "failed",
        "deliveries": 1,
        "first_received_at": now,
        "source": source,
        "payload": event if body is None else JSONText(body),
    }


def apply_event(
    session: Session, event: dict[str, Any], ctx: Context, source: str, body: str | None = None
) -> str:
    """Insert `event` and apply it once. Returns `processed`, `ignored` or `duplicate`.

    `body` is the verified body `event` was parsed from: stored as it is when given.

    Runs inside the caller's transaction; a handler error propagates and the caller rolls
    back (the event row with it). A concurrent transaction inserting the same id blocks on the
    unique key until this one ends, then sees the row: that is what makes concurrent
    duplicates harmless."""
    now = ctx.now()
    note = _ignore_note(event, ctx)
    handler = None if note else HANDLERS.get(event["type"])
    status = "processed" if handler else "ignored"
    row_values = _event_row(event, source, now, body)
    row_values.update(status=status, processed_at=now, last_error=note)
    if not _insert_ignore(session, row_values):
        if _count_delivery(session, event["id"]) != "failed":
            return "duplicate"
        # An earlier attempt failed and was rolled back: this delivery applies it now.
        raw(session).execute(
            _REAPPLIED,
            {
                "event_id": event["id"],
                "source": source,
                "status": status,
                "processed_at": now,
                "last_error": note,
            },
        )
    if handler is not None:
        handler(session, event, ctx)
    return status


def _ignore_note(event: dict[str, Any], ctx: Context) -> str | None:
    if ctx.expected_livemode is not None and event["livemode"] != ctx.expected_livemode:
        return "livemode does not match the configured Stripe key"
    return None


def record_failure(
    session: Session, event: dict[str, Any], error: str, now: datetime, body: str | None = None
) -> None:
    """Keep a failed event visible (and replayable) after its handler was rolled back."""
    row = _event_row(event, "webhook", now, body)
    row["last_error"] = error
    if not _insert_ignore(session, row) and _count_delivery(session, event["id"]) == "failed":
        raw(session).execute(_FAILED_AGAIN, {"event_id": event["id"], "last_error": error})


def safe_error(exc: BaseException) -> str:
    """A short description of a handler error for the tables: type and message, no traceback."""
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class Delivery:
    """One HTTP request to the webhook endpoint, as the receiver read it."""

    payload: bytes
    header: str | None
    remote_addr: str | None = None
    too_large: bool = False


def receive(
    engine: Engine,
    payload: bytes,
    header: str | None,
    *,
    secrets: Sequence[str],
    tolerance: int,
    ctx: Context,
    remote_addr: str | None = None,
    too_large: bool = False,
) -> Outcome:
    """The whole webhook path for one HTTP request. Never raises for bad input."""
    delivery = Delivery(payload, header, remote_addr, too_large)
    return receive_many(engine, [delivery], secrets=secrets, tolerance=tolerance, ctx=ctx)[0]


def receive_many(
    engine: Engine,
    deliveries: Sequence[Delivery],
    *,
    secrets: Sequence[str],
    tolerance: int,
    ctx: Context,
) -> list[Outcome]:
    """The webhook path for deliveries that arrived together, with one commit (group commit).

    Each event is applied inside its own savepoint: its event row, handler effects and delivery
    row stand or fall together, exactly as if it had a transaction of its own, and a handler
    error rolls back that event alone, which then gets its failed delivery row. One commit for
    the lot saves what dominates a small transaction (the commit writes every page it touched)
    and nothing is answered before that commit. Never raises for bad input; when the database
    is unavailable every verified delivery of the group is answered 503."""
    outcomes: list[Outcome] = []
    verified: list[int] = []
    grouped = len(deliveries) > 1
    try:
        with session_scope(engine) as session:
            for delivery in deliveries:
                outcome = receive_one(session, delivery, secrets, tolerance, ctx, grouped=grouped)
                if outcome.event_id is not None:
                    verified.append(len(outcomes))
                outcomes.append(outcome)
        return outcomes
    except (OperationalError, DBAPIError) as exc:
        unavailable = _is_unavailable(exc)
        error = safe_error(exc.orig if exc.orig is not None else exc)
    except Exception as exc:  # a failed commit: nothing of the group was written
        unavailable, error = False, safe_error(exc)
    log.error("webhook group of %d not written: %s", len(deliveries), error)
    failed = (
        Outcome(503, "error", "database_unavailable")
        if unavailable
        else Outcome(500, "error", "processing_failed")
    )
    for index in verified:
        outcomes[index] = Outcome(
            failed.status, failed.result, failed.reason, outcomes[index].event_id
        )
    # A rejection is answered even when it could not be recorded; unprocessed ones too.
    outcomes += [
        _rejection_only(d, secrets, tolerance, ctx, failed) for d in deliveries[len(outcomes) :]
    ]
    return outcomes


def receive_one(
    session: Session,
    delivery: Delivery,
    secrets: Sequence[str],
    tolerance: int,
    ctx: Context,
    *,
    grouped: bool,
) -> Outcome:
    """One delivery inside the caller's transaction (see `receive_many`); `grouped` when the
    transaction holds others, whose writes a failure of this one must not roll back."""
    started = time.perf_counter()
    received_at = ctx.now()

    def row(**values: Any) -> dict[str, Any]:
        return {
            "received_at": received_at,
            "remote_addr": delivery.remote_addr,
            "body_bytes": len(delivery.payload),
            "duration_ms": (time.perf_counter() - started) * 1000,
            **values,
        }

    try:
        event = _verify_delivery(delivery, secrets, tolerance, received_at.timestamp())
    except Rejection as rejection:
        outcome = Outcome(rejection.status, "rejected", rejection.reason)
        raw(session).execute(
            _INSERT_DELIVERY,
            row(
                verified=False,
                rejection_reason=outcome.reason,
                http_status=outcome.status,
                outcome="rejected",
            ),
        )
        return outcome

    base = {"event_id": event["id"], "event_type": event["type"], "verified": True}
    body = delivery.payload.decode("utf-8")  # verified: valid UTF-8
    try:
        # In a group, a savepoint (a failure rolls back to here only); alone, the transaction.
        with hot_path(session) as cursor, cursor.savepoint() if grouped else nullcontext():
            result = apply_event(session, event, ctx, "webhook", body)
            session.flush()  # anything a plug-in left pending, inside the event's savepoint
        if grouped:
            session.expunge_all()  # flushed: a group's identity map need not grow
    except Exception as exc:
        if grouped:
            session.expunge_all()  # objects loaded or changed by the rolled-back event
        else:
            session.rollback()  # the next statement begins a new transaction
        if isinstance(exc, DBAPIError) and _is_unavailable(exc):
            raise
        error = safe_error(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc)
        log.error("webhook %s (%s) failed: %s", event["id"], event["type"], error)
        record_failure(session, event, error, received_at, body)
        raw(session).execute(
            _INSERT_DELIVERY, row(**base, http_status=500, outcome="failed", error=error)
        )
        return Outcome(500, "error", "processing_failed", event_id=event["id"])
    raw(session).execute(_INSERT_DELIVERY, row(**base, http_status=200, outcome=result))
    return Outcome(200, result, event_id=event["id"])


def _verify_delivery(
    delivery: Delivery, secrets: Sequence[str], tolerance: int, now: float
) -> dict[str, Any]:
    if delivery.too_large:
        raise _reject("body_too_large", 413)
    return verify(delivery.payload, delivery.header, secrets, tolerance, now=now)


def _rejection_only(
    delivery: Delivery, secrets: Sequence[str], tolerance: int, ctx: Context, failed: Outcome
) -> Outcome:
    """The answer for a delivery the failed group never reached: its rejection, or `failed`."""
    try:
        event = _verify_delivery(delivery, secrets, tolerance, ctx.now().timestamp())
    except Rejection as rejection:
        return Outcome(rejection.status, "rejected", rejection.reason)
    return Outcome(failed.status, failed.result, failed.reason, event["id"])


def _is_unavailable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower() if exc.orig is not None else ""
    return any(
        marker in text
        for marker in (
            "connection refused",
            "could not connect",
            "unable to open database",
            "server closed the connection",
            "connection timeout",
            "the database system is shutting down",
            "terminating connection",
        )
    )
