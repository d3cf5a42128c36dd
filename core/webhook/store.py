"""Every statement of the webhook hot path, in one place (with core.db, the only code that
touches the DB-API cursor).

The domain modules (receive, handlers, orders, fulfillment) call the small named functions
below and meet no SQL and no cursor. Each statement is a `Prepared` Core statement, compiled
once per dialect and run on the cursor of the session's connection, inside the caller's
transaction (see core.db for why: SQLAlchemy's per-execution machinery cost more than the
statements themselves). Functions take the session and plain values, never commit.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.db import Prepared, hot_path, insert_ignore, raw
from core.models import (
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
    WebhookRejection,
)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


_DELIVERIES = _table(WebhookDelivery)
_EVENTS = _table(StripeEvent)
_ORDERS = _table(Order)
_ATTEMPTS = _table(PaymentAttempt)
_REJECTIONS = _table(WebhookRejection)

ORDER_COLUMNS = tuple(_ORDERS.columns.keys())
ATTEMPT_COLUMNS = tuple(_ATTEMPTS.columns.keys())


# --- One event's unit of work ------------------------------------------------------------------


@contextmanager
def isolated(session: Session) -> Iterator[None]:
    """One event's writes: undone alone if the block raises, the transaction going on (a
    savepoint on the shared cursor, see core.db.hot_path)."""
    with hot_path(session) as cursor, cursor.savepoint():
        yield


# --- Deliveries and events ---------------------------------------------------------------------

_INSERT_DELIVERY = Prepared(insert(_DELIVERIES))
# Another delivery of a stored event: counted, its row locked; its status says what to do.
_COUNT_DELIVERY = Prepared(
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(deliveries=_EVENTS.c.deliveries + 1)
    .returning(_EVENTS.c.status)
)
_REAPPLIED = Prepared(
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(
        source=bindparam("source"),
        status=bindparam("status"),
        processed_at=bindparam("processed_at"),
        last_error=bindparam("last_error"),
    )
)
# Only an event that is still not applied: a concurrent success is never overwritten.
_FAILED_AGAIN = Prepared(
    update(_EVENTS)
    .where(
        _EVENTS.c.id == bindparam("event_id"),
        or_(_EVENTS.c.status == "failed", _EVENTS.c.status == "unprocessable"),
    )
    .values(status=bindparam("status"), last_error=bindparam("last_error"))
)


def insert_delivery(session: Session, row: dict[str, Any]) -> None:
    raw(session).execute(_INSERT_DELIVERY, row)


def insert_event(session: Session, row: dict[str, Any]) -> bool:
    """Insert an event row unless its id is stored; True when this call inserted it."""
    return insert_ignore(session, StripeEvent, row, ["id"])


def count_delivery(session: Session, event_id: str) -> str:
    """Count one more delivery of a stored event (row-locked until commit); its status."""
    return str(raw(session).rows(_COUNT_DELIVERY, {"event_id": event_id})[0][0])


def mark_reapplied(
    session: Session,
    event_id: str,
    *,
    source: str,
    status: str,
    processed_at: datetime,
    last_error: str | None,
) -> None:
    raw(session).execute(
        _REAPPLIED,
        {
            "event_id": event_id,
            "source": source,
            "status": status,
            "processed_at": processed_at,
            "last_error": last_error,
        },
    )


def mark_not_applied(session: Session, event_id: str, status: str, error: str) -> None:
    """A stored event that is still failed (or unprocessable) failed again: the latest error."""
    raw(session).execute(
        _FAILED_AGAIN, {"event_id": event_id, "status": status, "last_error": error}
    )


# --- Rejected deliveries: counts per minute, reason and address --------------------------------


def _count_rejection_statement(dialect_insert: Any) -> Prepared:
    upsert = dialect_insert(_REJECTIONS).values(
        minute=bindparam("minute"),
        reason=bindparam("reason"),
        remote_addr=bindparam("remote_addr"),
        deliveries=1,
    )
    return Prepared(
        upsert.on_conflict_do_update(
            index_elements=["minute", "reason", "remote_addr"],
            set_={"deliveries": _REJECTIONS.c.deliveries + 1},
        ).returning(_REJECTIONS.c.deliveries)
    )


_COUNT_REJECTION = {
    "sqlite": _count_rejection_statement(sqlite_insert),
    "postgresql": _count_rejection_statement(pg_insert),
}


def count_rejection(session: Session, minute: datetime, reason: str, remote_addr: str) -> int:
    """Count one rejected delivery; how many this (minute, reason, address) holds now."""
    cursor = raw(session)
    found = cursor.rows(
        _COUNT_REJECTION[cursor.dialect.name],
        {"minute": minute, "reason": reason, "remote_addr": remote_addr},
    )
    return int(found[0][0])


# --- Orders ------------------------------------------------------------------------------------

_INSERT_TRANSITION = Prepared(insert(_table(OrderTransition)))
_KEYS = ((True, True), (True, False), (False, True))  # by Checkout Session, by PaymentIntent


def _lock_statement(by_session: bool, by_intent: bool) -> Prepared:
    keys = []
    if by_session:
        keys.append(_ORDERS.c.checkout_session_id == bindparam("session"))
    if by_intent:
        keys.append(_ORDERS.c.payment_intent_id == bindparam("intent"))
    return Prepared(select(_ORDERS).where(or_(*keys)).order_by(_ORDERS.c.id).with_for_update())


# Built once per key combination: the webhook hot path runs them for every order event.
_LOCK_ROWS = {key: _lock_statement(*key) for key in _KEYS}
_LINK_ATTEMPTS = Prepared(
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.payment_intent_id == bindparam("intent"),
        _ATTEMPTS.c.order_id.is_(None),
    )
    .values(order_id=bindparam("order_id"))
)
_LOCK_INTENT = Prepared(text("SELECT pg_advisory_xact_lock(:key)"))


def insert_order(session: Session, values: dict[str, Any]) -> bool:
    """Insert an order unless one with the same Checkout Session or PaymentIntent exists."""
    return insert_ignore(session, Order, values)


def lock_order_rows(
    session: Session, checkout_session_id: str | None, payment_intent_id: str | None
) -> list[tuple[Any, ...]]:
    """The order rows holding either key, row-locked, oldest first (columns: ORDER_COLUMNS)."""
    key = (bool(checkout_session_id), bool(payment_intent_id))
    params = {"session": checkout_session_id, "intent": payment_intent_id}
    return raw(session).rows(_LOCK_ROWS[key], params)


def update_order(session: Session, order_id: int, values: dict[str, Any]) -> None:
    """Write the changed columns `values` of one order."""
    raw(session).execute(_update_order(tuple(values)), {"order_id": order_id, **values})


@functools.cache
def _update_order(columns: tuple[str, ...]) -> Prepared:
    return Prepared(
        update(_ORDERS)
        .where(_ORDERS.c.id == bindparam("order_id"))
        .values({name: bindparam(name) for name in columns})
    )


def insert_transition(session: Session, values: dict[str, Any]) -> None:
    # A plain insert (needs only the order's id): cheaper than a unit-of-work insert.
    raw(session).execute(_INSERT_TRANSITION, values)


def lock_payment_intent(session: Session, payment_intent_id: str) -> None:
    """A transaction-long lock on one PaymentIntent id (PostgreSQL; SQLite writers are serial
    already). See core.webhook.orders.lock_payment_intent for why."""
    cursor = raw(session)
    if cursor.dialect.name == "postgresql":
        digest = hashlib.blake2b(payment_intent_id.encode(), digest_size=8, person=b"pi_link")
        key = int.from_bytes(digest.digest(), "big", signed=True)
        cursor.execute(_LOCK_INTENT, {"key": key})


def link_attempts(session: Session, payment_intent_id: str, order_id: int) -> None:
    """Attach the attempts of a PaymentIntent that have no order yet to `order_id`."""
    raw(session).execute(_LINK_ATTEMPTS, {"intent": payment_intent_id, "order_id": order_id})


# --- Payment attempts --------------------------------------------------------------------------

_ATTEMPT_FOR_UPDATE = Prepared(
    select(_ATTEMPTS).where(_ATTEMPTS.c.id == bindparam("id")).with_for_update()
)
_ORDER_ID_BY_INTENT = Prepared(
    select(_ORDERS.c.id).where(_ORDERS.c.payment_intent_id == bindparam("intent"))
)
# What a later event of the same attempt may fill in (never overwrite): outcome and event_id
# belong to the first record, `created` only moves earlier.
MERGED_ATTEMPT_COLUMNS = tuple(
    c.name for c in _ATTEMPTS.columns if c.name not in ("id", "outcome", "event_id", "created")
)
_UPDATE_ATTEMPT = Prepared(
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.id == bindparam("attempt_id"))
    .values({name: bindparam(name) for name in (*MERGED_ATTEMPT_COLUMNS, "created")})
)
_ATTEMPT_INTENT = Prepared(
    select(_ATTEMPTS.c.payment_intent_id).where(_ATTEMPTS.c.id == bindparam("id"))
)


def insert_attempt(session: Session, row: dict[str, Any]) -> bool:
    return insert_ignore(session, PaymentAttempt, row, ["id"])


def lock_attempt(session: Session, attempt_id: str) -> dict[str, Any] | None:
    """One stored attempt, row-locked, as a dict of its columns."""
    found = raw(session).first(_ATTEMPT_FOR_UPDATE, {"id": attempt_id})
    return None if found is None else dict(zip(ATTEMPT_COLUMNS, found, strict=True))


def update_attempt(session: Session, attempt_id: str, merged: dict[str, Any]) -> None:
    raw(session).execute(_UPDATE_ATTEMPT, {**merged, "attempt_id": attempt_id})


def order_id_by_intent(session: Session, payment_intent_id: str) -> int | None:
    found = raw(session).first(_ORDER_ID_BY_INTENT, {"intent": payment_intent_id})
    return None if found is None else int(found[0])


def attempt_intent(session: Session, attempt_id: str | None) -> str | None:
    """The PaymentIntent of a stored attempt (charge), if any."""
    if attempt_id is None:
        return None
    found = raw(session).first(_ATTEMPT_INTENT, {"id": attempt_id})
    return None if found is None or found[0] is None else str(found[0])


# --- Fulfillments ------------------------------------------------------------------------------


def claim_fulfillment(session: Session, claim: dict[str, Any]) -> bool:
    """Insert an order's one fulfillment row; False when it already has one (UNIQUE key)."""
    return insert_ignore(session, Fulfillment, claim, ["order_id"])


def withdraw_fulfillment(session: Session, order_id: int) -> None:
    session.execute(delete(Fulfillment).where(Fulfillment.order_id == order_id))
