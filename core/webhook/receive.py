"""Record every delivery, apply every verified event exactly once (DESIGN.md, the webhook path).

One transaction inserts the event (primary key = Stripe id), applies its handler and writes the
delivery row; a duplicate changes nothing; a handler error rolls back and leaves a failed
delivery row. Deliveries that arrive together share one commit (`receive_many`), each event
inside its own savepoint. No network call happens here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from core.db import JSONText, Prepared, hot_path, insert_ignore, raw, session_scope
from core.models import StripeEvent, WebhookDelivery
from core.webhook.handlers import HANDLERS, Context
from core.webhook.signature import Rejection, _reject, verify

log = logging.getLogger(__name__)


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


MAX_ERROR_CHARS = 500


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
    received_at = delivery.received_at or ctx.now()
    if delivery.received_at is not None:
        ctx = replace(ctx, clock=lambda: received_at)

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
