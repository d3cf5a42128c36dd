"""The order state machine.

An order's status is not stored blindly from the latest event: each event records a *fact*
(paid at, refunded amount, disputed at, ...) that is only ever set or increased, and the status
is derived from the facts. Facts never go away, so the status only moves forward, and any
permutation of an order's events ends in the same state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.instrumentation import ClassManager, manager_of_class

from core.models import Order, utcnow
from core.webhook import store

# Forward order of statuses; a higher rank is never replaced by a lower one.
STATUSES = (
    "pending",
    "expired",
    "failed",
    "paid",
    "fulfilled",
    "partially_refunded",
    "refunded",
    "disputed",
)
RANK = {status: rank for rank, status in enumerate(STATUSES)}
UNFULFILLABLE = frozenset({"partially_refunded", "refunded", "disputed", "failed", "expired"})


def derive_status(order: Order) -> str:
    if order.disputed_at is not None:
        return "disputed"
    if order.amount_refunded > 0:
        full = order.amount_total > 0 and order.amount_refunded >= order.amount_total
        return "refunded" if full else "partially_refunded"
    if order.fulfilled_at is not None:
        return "fulfilled"
    if order.paid_at is not None:
        return "paid"
    if order.failed_at is not None:
        return "failed"
    if order.expired_at is not None:
        return "expired"
    return "pending"


def refresh_status(
    session: Session, order: Order, *, event_id: str | None, actor: str | None, at: datetime
) -> str:
    """Recompute the status from the facts; record a transition when it moves."""
    new = derive_status(order)
    old = order.status
    if new != old:
        if RANK[new] < RANK.get(old, 0):  # pragma: no cover - facts make this impossible
            raise AssertionError(f"order {order.id} would move back from {old} to {new}")
        order.status = new
        order.updated_at = at
        store.insert_transition(
            session,
            {
                "order_id": order.id,
                "at": at,
                "from_status": old,
                "to_status": new,
                "event_id": event_id,
                "actor": actor,
            },
        )
    return new


def _earliest(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate < current else current


def _claim(
    session: Session,
    checkout_session_id: str | None,
    payment_intent_id: str | None,
    defaults: dict[str, Any] | None,
) -> None:
    """Create the order unless it exists."""
    if not checkout_session_id and not payment_intent_id:
        raise ValueError("an order needs a Checkout Session id or a PaymentIntent id")
    values: dict[str, Any] = {"status": "pending", "amount_total": 0, "amount_refunded": 0}
    values.update(defaults or {})
    values["checkout_session_id"] = checkout_session_id
    values["payment_intent_id"] = payment_intent_id
    values.setdefault("created_at", utcnow())
    values["updated_at"] = values["created_at"]
    if payment_intent_id:  # always before the order row: the one lock order, no deadlock
        lock_payment_intent(session, payment_intent_id)
    store.insert_order(session, values)


def _join_keys(
    order: Order, checkout_session_id: str | None, payment_intent_id: str | None
) -> None:
    """One order row found: give it the key it lacked. (Two rows, one per key, would clash on
    the other unique key: both are kept.)"""
    if checkout_session_id and order.checkout_session_id is None:
        order.checkout_session_id = checkout_session_id
    if payment_intent_id and order.payment_intent_id is None:
        order.payment_intent_id = payment_intent_id


@contextmanager
def locked_order(
    session: Session,
    *,
    checkout_session_id: str | None = None,
    payment_intent_id: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Iterator[Order]:
    """The order for a Checkout Session or PaymentIntent, created if missing, row-locked.

    An event about a payment can arrive before the session's completion: the order is then
    created from the PaymentIntent alone and joined to its session when that arrives.

    Without the ORM's unit of work (the webhook hot path): the order is a detached copy of its
    locked row, and what the block changed is written back with one UPDATE when it ends
    (nothing when it raises: the caller rolls back)."""
    _claim(session, checkout_session_id, payment_intent_id, defaults)
    rows = store.lock_order_rows(session, checkout_session_id, payment_intent_id)
    before = rows[0]
    order: Order = _order_class().new_instance()  # as a load would: no per-attribute events
    order.__dict__.update(zip(store.ORDER_COLUMNS, before, strict=True))
    if len(rows) == 1:
        _join_keys(order, checkout_session_id, payment_intent_id)
    yield order
    changed = tuple(
        name
        for name, old in zip(store.ORDER_COLUMNS, before, strict=True)
        if getattr(order, name) != old
    )
    if changed:
        if "updated_at" not in changed:  # the column's onupdate, as a flush would apply it
            order.updated_at = utcnow()
            changed += ("updated_at",)
        store.update_order(session, order.id, {name: getattr(order, name) for name in changed})


@functools.cache
def _order_class() -> ClassManager[Order]:
    configure_mappers()  # an instance's attributes work once its mapper is configured
    return manager_of_class(Order)


def lock_payment_intent(session: Session, payment_intent_id: str) -> None:
    """Serialise the transactions that join one PaymentIntent's attempts and order.

    An attempt looks its order up, an order links its attempts up: two concurrent transactions
    on PostgreSQL would each miss the other's uncommitted row and leave the attempt unlinked.
    With this lock (held until commit) the second one sees the first. SQLite writers are serial
    already."""
    store.lock_payment_intent(session, payment_intent_id)


def link_attempts(session: Session, order: Order, payment_intent_id: str) -> None:
    """Attach the attempts of `payment_intent_id` that arrived before their order.

    The caller holds the PaymentIntent's lock (`locked_order` takes it). An order that had its
    PaymentIntent before this transaction linked its attempts then, and every later attempt
    found the order: only the transaction that brings the PaymentIntent has to link."""
    # Needs only the order's id: no need to flush its other changes.
    store.link_attempts(session, payment_intent_id, order.id)


def mark_paid(order: Order, at: datetime) -> None:
    order.paid_at = _earliest(order.paid_at, at)


def mark_failed(order: Order, at: datetime) -> None:
    order.failed_at = _earliest(order.failed_at, at)


def mark_expired(order: Order, at: datetime) -> None:
    order.expired_at = _earliest(order.expired_at, at)


def mark_refunded(order: Order, amount_refunded: int, at: datetime) -> None:
    if amount_refunded > order.amount_refunded:
        order.amount_refunded = amount_refunded
        order.refunded_at = _earliest(order.refunded_at, at)


def mark_disputed(order: Order, at: datetime) -> None:
    order.disputed_at = _earliest(order.disputed_at, at)


def can_fulfill(order: Order) -> bool:
    return order.paid_at is not None and derive_status(order) == "paid"
