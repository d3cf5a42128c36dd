"""Record every delivery, apply every verified event exactly once (DESIGN.md, the webhook path).

One transaction inserts the event (primary key = Stripe id), applies its handler and writes the
delivery row; a duplicate changes nothing; a handler error rolls back and leaves a failed
delivery row. Deliveries that arrive together share one commit (`receive_many`), each event
inside its own savepoint. No network call happens here.

Each delivery is answered on its own merits: nothing one event does (a handler error, a value
the database refuses, a failure while recording its failure) changes another's answer. A signed
event that can never be applied (core.webhook.validate, or a value the database refuses) is
stored as `unprocessable` and answered 200: the same bytes would fail the same way on every
retry, so a 5xx would only make Stripe retry it for days; it waits on the Webhooks page for an
operator to replay. 500 stays for our own failures, which a retry can cure.

Rejected requests (bad signature, malformed body...) are counted per minute, reason and source
address (webhook_rejections) and only a bounded sample of them gets a delivery row, so a flood
of unauthenticated requests cannot grow the database without limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from core.db import JSONText, session_scope
from core.db import is_unavailable as _is_unavailable
from core.webhook import store
from core.webhook.handlers import HANDLERS, Context
from core.webhook.signature import Rejection, _reject, verify
from core.webhook.validate import clean, clean_or_none, envelope_problem, problem

log = logging.getLogger(__name__)


MAX_ERROR_CHARS = 500
# Rejected requests kept with details (a delivery row) per minute, reason and source address;
# the others are only counted.
SAMPLES_PER_MINUTE = 3
# A stored event in one of these states was never applied: another delivery applies it now.
NOT_APPLIED = ("failed", "unprocessable")
UNPROCESSABLE = "unprocessable_event"  # the answer's reason (a fixed code: metrics labels)


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


def event_key(event: dict[str, Any]) -> str:
    """The event's id as stored (the id itself, unless it holds what no column can take)."""
    return clean(event["id"], 255)


def _event_row(
    event: dict[str, Any], source: str, now: datetime, body: str | None
) -> dict[str, Any]:
    obj = event["data"]["object"]
    return {
        "id": event_key(event),
        "type": clean(event["type"], 255),
        "created": datetime.fromtimestamp(event["created"], UTC),
        "livemode": event["livemode"],
        "api_version": clean_or_none(event.get("api_version"), 64),
        "object_id": clean_or_none(obj.get("id"), 255),
        "status": "failed",
        "deliveries": 1,
        "first_received_at": now,
        "source": source,
        "payload": event if body is None else JSONText(body),
    }


def apply_event(
    session: Session, event: dict[str, Any], ctx: Context, source: str, body: str | None = None
) -> str:
    """Insert `event` and apply it once. Returns `processed`, `ignored`, `unprocessable` (stored
    with the reason, not applied: see core.webhook.validate) or `duplicate`.

    `body` is the verified body `event` was parsed from: stored as it is when given.

    Runs inside the caller's transaction; a handler error propagates and the caller rolls
    back (the event row with it). A concurrent transaction inserting the same id blocks on the
    unique key until this one ends, then sees the row: that is what makes concurrent
    duplicates harmless."""
    now = ctx.now()
    note = _ignore_note(event, ctx)
    reason = envelope_problem(event) if note else problem(event)
    handler = None if note or reason else HANDLERS.get(event["type"])
    status = "unprocessable" if reason else "processed" if handler else "ignored"
    row_values = _event_row(event, source, now, body)
    row_values.update(
        status=status, processed_at=None if reason else now, last_error=reason or note
    )
    if not store.insert_event(session, row_values):
        if store.count_delivery(session, row_values["id"]) not in NOT_APPLIED:
            return "duplicate"
        # An earlier attempt failed (or could not be applied): this delivery tries it now.
        store.mark_reapplied(
            session,
            row_values["id"],
            source=source,
            status=status,
            processed_at=row_values["processed_at"],
            last_error=row_values["last_error"],
        )
    if handler is not None:
        handler(session, event, ctx)
    return status


def _ignore_note(event: dict[str, Any], ctx: Context) -> str | None:
    if ctx.expected_livemode is not None and event["livemode"] != ctx.expected_livemode:
        return "livemode does not match the configured Stripe key"
    return None


def record_failure(
    session: Session,
    event: dict[str, Any],
    error: str,
    now: datetime,
    body: str | None = None,
    status: str = "failed",
) -> None:
    """Keep a failed (or unprocessable) event visible and replayable after its handler was
    rolled back."""
    row = _event_row(event, "webhook", now, body)
    row["status"] = status
    row["last_error"] = error
    if not store.insert_event(session, row) and (
        store.count_delivery(session, row["id"]) in NOT_APPLIED
    ):
        store.mark_not_applied(session, row["id"], status, error)


def safe_error(exc: BaseException) -> str:
    """A short description of a handler error for the tables: type and message, no traceback,
    storable (the message may quote a value from the event)."""
    return clean(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)


def refused_value(exc: BaseException) -> bool:
    """An error caused by a value of the event that no retry changes: the database refused it
    (too long, out of range, a NUL), or the driver could not even send it."""
    return isinstance(exc, (DataError, OverflowError, UnicodeEncodeError))


@dataclass(frozen=True)
class Delivery:
    """One HTTP request to the webhook endpoint, as the receiver read it."""

    payload: bytes
    header: str | None
    remote_addr: str | None = None
    too_large: bool = False
    # When it arrived; None: now, on ctx's clock. A replay (the demo) sets it: the delivery is
    # then verified, recorded and applied at that time.
    received_at: datetime | None = None


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
    try:
        with session_scope(engine) as session:
            for delivery in deliveries:
                outcome = receive_one(session, delivery, secrets, tolerance, ctx)
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
) -> Outcome:
    """One delivery inside the caller's transaction (see `receive_many`), in savepoints of its
    own: whatever it does, the caller's other writes stand. Raises only when the database is
    unavailable."""
    started = time.perf_counter()
    received_at = delivery.received_at or ctx.now()
    if delivery.received_at is not None:
        ctx = replace(ctx, clock=lambda: received_at)

    def row(**values: Any) -> dict[str, Any]:
        return {
            "received_at": received_at,
            "remote_addr": clean_or_none(delivery.remote_addr, 64),
            "body_bytes": len(delivery.payload),
            "duration_ms": (time.perf_counter() - started) * 1000,
            **values,
        }

    try:
        event = _verify_delivery(delivery, secrets, tolerance, received_at.timestamp())
    except Rejection as rejection:
        outcome = Outcome(rejection.status, "rejected", rejection.reason)
        sample = row(
            verified=False,
            rejection_reason=outcome.reason,
            http_status=outcome.status,
            outcome="rejected",
        )
        _contained(session, "rejection", lambda: _count_rejection(session, sample))
        return outcome

    key = event_key(event)
    base = {"event_id": key, "event_type": clean(event["type"], 255), "verified": True}
    body = delivery.payload.decode("utf-8")  # verified: valid UTF-8
    try:
        with store.isolated(session):  # a failure rolls back to here only
            result = apply_event(session, event, ctx, "webhook", body)
            session.flush()  # anything a plug-in left pending, inside the event's savepoint
            store.insert_delivery(session, row(**base, http_status=200, outcome=result))
        session.expunge_all()  # flushed: a group's identity map need not grow
    except Exception as exc:
        session.expunge_all()  # objects loaded or changed by the rolled-back event
        if isinstance(exc, DBAPIError) and _is_unavailable(exc):
            raise
        return _not_applied(session, event, exc, body, lambda **v: row(**base, **v))
    if result == "unprocessable":
        return Outcome(200, "unprocessable", UNPROCESSABLE, event_id=key)
    return Outcome(200, result, event_id=key)


def _not_applied(
    session: Session,
    event: dict[str, Any],
    exc: Exception,
    body: str,
    row: Callable[..., dict[str, Any]],
) -> Outcome:
    """Record an event whose handler raised, and its delivery; the answer.

    A value the database refused makes the event unprocessable (200); anything else is ours to
    fix or to retry (500). If even the event row cannot be written, the delivery row still is
    (with what went wrong), and the answer is a 500: the event is not stored anywhere yet."""
    error = safe_error(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc)
    status = "unprocessable" if refused_value(exc) else "failed"
    key = event_key(event)
    log.error("webhook %s (%s) %s: %s", key, clean(event["type"], 255), status, error)
    delivery = row(http_status=200 if status == "unprocessable" else 500, outcome=status)

    def record() -> None:
        record_failure(session, event, error, delivery["received_at"], body, status)
        store.insert_delivery(session, {**delivery, "error": error})

    if _contained(session, "event", record):
        if status == "unprocessable":
            return Outcome(200, "unprocessable", UNPROCESSABLE, event_id=key)
        return Outcome(500, "error", "processing_failed", event_id=key)
    fallback = {**delivery, "http_status": 500, "outcome": "failed", "error": error}
    _contained(session, "delivery", lambda: store.insert_delivery(session, fallback))
    return Outcome(500, "error", "processing_failed", event_id=key)


def _contained(session: Session, what: str, write: Callable[[], None]) -> bool:
    """Run `write` in a savepoint of its own; False (logged, rolled back) if it raised, unless
    the database is unavailable: then the whole group fails, as it must."""
    try:
        with store.isolated(session):
            write()
    except Exception as exc:
        session.expunge_all()
        if isinstance(exc, DBAPIError) and _is_unavailable(exc):
            raise
        log.error("webhook: could not record the %s: %s", what, safe_error(exc))
        return False
    return True


def _count_rejection(session: Session, sample: dict[str, Any]) -> None:
    """Count a rejected request; keep it with its details while its minute, reason and address
    have fewer than SAMPLES_PER_MINUTE samples."""
    at: datetime = sample["received_at"]
    minute = at.replace(second=0, microsecond=0)
    seen = store.count_rejection(
        session, minute, sample["rejection_reason"], sample["remote_addr"] or ""
    )
    if seen <= SAMPLES_PER_MINUTE:
        store.insert_delivery(session, sample)


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
