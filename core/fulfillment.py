"""Fulfil a paid order exactly once.

The UNIQUE key on `fulfillments.order_id` is what makes it exactly once: the webhook, an
operator and a reconciliation run may all try, only one insert wins, the others are told the
order is already fulfilled. What fulfilment *does* is a pluggable function; the default only
records it (the row is the record)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from core.db import insert_ignore
from core.models import Fulfillment, Order
from core.orders import can_fulfill, refresh_status

Fulfiller = Callable[[Session, Order], None]


def record_only(session: Session, order: Order) -> None:
    """The default fulfiller: the `fulfillments` row is the record; nothing else to do."""


def fulfill(
    session: Session,
    order: Order,
    *,
    source: str,
    at: datetime,
    fulfiller: Fulfiller = record_only,
    actor: str | None = None,
    reason: str | None = None,
    event_id: str | None = None,
) -> bool:
    """Fulfil `order` (row-locked by the caller) unless it already is. True when this call did.

    The fulfiller runs in the caller's transaction: if it raises, nothing is recorded and the
    caller's error handling (a 500 to Stripe, a message to the operator) takes over."""
    if not can_fulfill(order):
        return False
    inserted = insert_ignore(
        session,
        Fulfillment,
        {
            "order_id": order.id,
            "fulfilled_at": at,
            "source": source,
            "actor": actor,
            "reason": reason,
            "event_id": event_id,
        },
        ["order_id"],
    )
    if not inserted:
        return False
    fulfiller(session, order)
    order.fulfilled_at = at
    refresh_status(session, order, event_id=event_id, actor=actor, at=at)
    return True
