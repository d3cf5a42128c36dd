"""Fulfil a paid order exactly once.

The UNIQUE key on `fulfillments.order_id` is what makes it exactly once: the webhook, an
operator and a reconciliation run may all try, only one insert wins, the others are told the
order is already fulfilled. What fulfilment *does* is a pluggable function; the default only
records it (the row is the record)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from core.models import Order
from core.webhook import store
from core.webhook.orders import can_fulfill, refresh_status

log = logging.getLogger(__name__)

Fulfiller = Callable[[Session, Order], None]


class FulfillmentDeferred(Exception):
    """Raised by a fulfiller that cannot complete now (stock, a partner system down).

    The payment stays recorded and the order stays *paid*, visible as "paid but not
    fulfilled" for a manual or later fulfillment. Any other exception is a crash: the whole
    event rolls back and Stripe retries it."""


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

    The fulfiller runs in the caller's transaction, after the unique row is claimed, so it can
    never run twice for one order. If it raises FulfillmentDeferred (having done nothing), the
    claim is withdrawn and False is returned; any other error propagates and the caller's
    error handling (a 500 to Stripe, a message to the operator) takes over."""
    if not can_fulfill(order):
        return False
    claim = {
        "order_id": order.id,
        "fulfilled_at": at,
        "source": source,
        "actor": actor,
        "reason": reason,
        "event_id": event_id,
    }
    if not store.claim_fulfillment(session, claim):
        return False
    try:
        if fulfiller is not record_only:
            # A savepoint of the session's own: a failed flush of the fulfiller's rolls back
            # to here, and the session stays usable for the other events of a group.
            with session.begin_nested():
                fulfiller(session, order)
    except FulfillmentDeferred as deferred:
        # The order row is locked by the caller: nobody else can have seen this claim.
        store.withdraw_fulfillment(session, order.id)
        log.warning("order %s: fulfillment deferred: %s", order.id, deferred)
        return False
    order.fulfilled_at = at
    refresh_status(session, order, event_id=event_id, actor=actor, at=at)
    return True
