"""Order lookup for support: search, one order, and its timeline.

Tables take limit/offset and have a matching count function for their pager.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    union,
)
from sqlalchemy.orm import Session

from core.console.period import _LAST4, _frame
from core.models import (
    AuditEntry,
    Fulfillment,
    FulfillmentRequest,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
)

# Audit rows about an order name it as "order:<id>" (see `order_target`).
ORDER_TARGET_PREFIX = "order:"


def order_target(order_id: int) -> str:
    """The audit_log.target of an action on an order, so its timeline finds it."""
    return f"{ORDER_TARGET_PREFIX}{order_id}"


ORDER_COLUMNS = (
    "id",
    "checkout_session_id",
    "payment_intent_id",
    "customer_id",
    "customer_email",
    "amount_total",
    "currency",
    "status",
    "created_at",
    "paid_at",
    "fulfilled_at",
)


_ORDER_ID = re.compile(r"^\d{1,18}$")
_WHOLE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_PAGE = 500


def _order_match(query: str, *, full_emails: bool = True) -> ColumnElement[bool] | None:
    """The condition selecting orders for a search text; each branch is an indexed lookup.

    Roles that see emails masked (`full_emails=False`, no `emails.view_full`) may search by a
    whole address only: a prefix match would let its result count (or its presence) spell out
    a masked address letter by letter (issue 12, finding 5)."""
    text = query.strip()
    if not text:
        return None
    lowered = text.lower()
    if _LAST4.match(text):
        # Card last4, or an order id of four digits: one semi-join on an indexed id list (an OR
        # of the two would make PostgreSQL scan every order).
        ids = union(
            select(PaymentAttempt.order_id).where(
                PaymentAttempt.card_last4 == text, PaymentAttempt.order_id.is_not(None)
            ),
            select(literal(int(text))),
        ).subquery()
        return Order.id.in_(select(ids.c[0]))
    if _ORDER_ID.match(text):
        return Order.id == int(text)
    if lowered.startswith("cs_"):
        return Order.checkout_session_id == text
    if lowered.startswith("pi_"):
        return Order.payment_intent_id == text
    if lowered.startswith("cus_"):
        return Order.customer_id == text
    if lowered.startswith(("ch_", "py_")):
        return Order.id.in_(select(PaymentAttempt.order_id).where(PaymentAttempt.id == text))
    # An email, or the start of one: a range on the lower(email) index, then an exact prefix
    # test (the range alone could be loose under a linguistic collation).
    email = func.lower(Order.customer_email)
    if not full_emails:
        return email == lowered if _WHOLE_EMAIL.match(lowered) else false()
    upper = lowered[:-1] + chr(ord(lowered[-1]) + 1)
    escaped = lowered.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return and_(
        email >= lowered,
        email < upper,
        email.like(escaped + "%", escape="\\"),
    )


def search_orders(
    session: Session, query: str, *, limit: int = 50, offset: int = 0, full_emails: bool = True
) -> pd.DataFrame:
    """Orders matching an email (case-insensitive, exact or prefix), an order id, a Checkout
    Session id (cs_), PaymentIntent id (pi_), customer id (cus_), charge id (ch_) or card last4
    (4 digits, which may also be an order id). Newest first. Without `full_emails` an email
    must be typed in full (see `_order_match`)."""
    condition = _order_match(query, full_emails=full_emails)
    if condition is None:
        return _frame([], ORDER_COLUMNS)
    columns = [getattr(Order, name) for name in ORDER_COLUMNS]
    rows = session.execute(
        select(*columns)
        .where(condition)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(max(0, min(limit, MAX_PAGE)))
        .offset(max(0, offset))
    ).all()
    frame = _frame(rows, ORDER_COLUMNS)
    for column in ("created_at", "paid_at", "fulfilled_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["id"] = frame["id"].astype("int64")
    frame["amount_total"] = frame["amount_total"].astype("int64")
    return frame


def count_orders(session: Session, query: str, *, full_emails: bool = True) -> int:
    """How many orders `search_orders` would page through."""
    condition = _order_match(query, full_emails=full_emails)
    if condition is None:
        return 0
    return int(
        session.execute(select(func.count()).select_from(Order).where(condition)).scalar_one()
    )


@dataclass(frozen=True)
class OrderDetail:
    id: int
    checkout_session_id: str | None
    payment_intent_id: str | None
    customer_id: str | None
    customer_email: str | None
    amount_total: int
    amount_refunded: int
    currency: str | None
    status: str
    promotion_code: str | None
    livemode: bool
    created_at: datetime
    paid_at: datetime | None
    fulfilled_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    refunded_at: datetime | None
    disputed_at: datetime | None
    updated_at: datetime


def get_order(session: Session, order_id: int) -> OrderDetail | None:
    order = session.get(Order, order_id)
    if order is None:
        return None
    return OrderDetail(**{name: getattr(order, name) for name in OrderDetail.__dataclass_fields__})


TimelineKind = Literal["state", "attempt", "event", "delivery", "fulfillment", "action"]


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: TimelineKind
    title: str
    detail: dict[str, Any] = field(default_factory=dict)


def _attempt_entry(attempt: PaymentAttempt) -> TimelineEntry:
    if attempt.outcome == "succeeded":
        title = "Payment succeeded"
    else:
        reason = attempt.decline_code or attempt.failure_code or "unknown"
        title = f"Payment failed: {reason}"
    return TimelineEntry(
        attempt.created,
        "attempt",
        title,
        {
            "attempt_id": attempt.id,
            "payment_intent_id": attempt.payment_intent_id,
            "amount": attempt.amount,
            "currency": attempt.currency,
            "outcome": attempt.outcome,
            "failure_code": attempt.failure_code,
            "decline_code": attempt.decline_code,
            "network_status": attempt.network_status,
            "failure_message": attempt.failure_message,
            "card_brand": attempt.card_brand,
            "card_last4": attempt.card_last4,
            "card_fingerprint": attempt.card_fingerprint,
            "ip_address": attempt.ip_address,
            "event_id": attempt.event_id,
        },
    )


def order_timeline(session: Session, order_id: int) -> list[TimelineEntry]:
    """Everything that happened to one order, oldest first: state changes, payment attempts,
    Stripe events with every delivery, fulfillment (and requests for it), operator actions."""
    order = session.get(Order, order_id)
    if order is None:
        return []
    entries: list[TimelineEntry] = []

    transitions = session.scalars(
        select(OrderTransition).where(OrderTransition.order_id == order_id)
    ).all()
    for tr in transitions:
        entries.append(
            TimelineEntry(
                tr.at,
                "state",
                f"{tr.from_status} → {tr.to_status}",
                {
                    "from": tr.from_status,
                    "to": tr.to_status,
                    "event_id": tr.event_id,
                    "actor": tr.actor,
                },
            )
        )

    attempt_filter = [PaymentAttempt.order_id == order_id]
    if order.payment_intent_id:
        attempt_filter.append(PaymentAttempt.payment_intent_id == order.payment_intent_id)
    attempts = session.scalars(select(PaymentAttempt).where(or_(*attempt_filter))).all()
    entries.extend(_attempt_entry(attempt) for attempt in attempts)

    fulfillment = session.scalars(
        select(Fulfillment).where(Fulfillment.order_id == order_id)
    ).first()
    if fulfillment is not None:
        entries.append(
            TimelineEntry(
                fulfillment.fulfilled_at,
                "fulfillment",
                f"Fulfilled ({fulfillment.source})",
                {
                    "source": fulfillment.source,
                    "actor": fulfillment.actor,
                    "reason": fulfillment.reason,
                    "event_id": fulfillment.event_id,
                },
            )
        )
    requests = session.scalars(
        select(FulfillmentRequest).where(FulfillmentRequest.order_id == order_id)
    ).all()
    for req in requests:
        entries.append(
            TimelineEntry(
                req.requested_at,
                "fulfillment",
                f"Manual fulfillment requested by {req.requested_by}",
                {"request_id": req.id, "reason": req.reason, "status": req.status},
            )
        )
        if req.decided_at is not None:
            entries.append(
                TimelineEntry(
                    req.decided_at,
                    "fulfillment",
                    f"Manual fulfillment {req.status} by {req.decided_by}",
                    {"request_id": req.id, "outcome": req.outcome, "status": req.status},
                )
            )

    # The order's events: about its session, intent or charges, or named by a row they wrote
    # (a dispute event is about a dp_ object, but its transition names it).
    object_ids = {order.checkout_session_id, order.payment_intent_id}
    object_ids.update(attempt.id for attempt in attempts)
    object_ids.discard(None)
    event_ids = {tr.event_id for tr in transitions} | {a.event_id for a in attempts}
    if fulfillment is not None:
        event_ids.add(fulfillment.event_id)
    event_ids.discard(None)
    event_query = union(
        select(StripeEvent.id).where(StripeEvent.object_id.in_(sorted(object_ids))),
        select(StripeEvent.id).where(StripeEvent.id.in_(sorted(event_ids))),
    ).subquery()
    events = session.execute(
        select(
            StripeEvent.id,
            StripeEvent.type,
            StripeEvent.created,
            StripeEvent.status,
            StripeEvent.deliveries,
            StripeEvent.processed_at,
            StripeEvent.last_error,
            StripeEvent.source,
        ).where(StripeEvent.id.in_(select(event_query.c.id)))
    ).all()
    for ev in events:
        entries.append(
            TimelineEntry(
                ev.created,
                "event",
                f"Stripe event {ev.type}",
                {
                    "event_id": ev.id,
                    "type": ev.type,
                    "status": ev.status,
                    "deliveries": ev.deliveries,
                    "processed_at": ev.processed_at,
                    "last_error": ev.last_error,
                    "source": ev.source,
                },
            )
        )
    if events:
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event_id.in_([ev.id for ev in events]))
        ).all()
        for dl in deliveries:
            entries.append(
                TimelineEntry(
                    dl.received_at,
                    "delivery",
                    f"Delivery of {dl.event_type}: {dl.outcome} (HTTP {dl.http_status})",
                    {
                        "delivery_id": dl.id,
                        "event_id": dl.event_id,
                        "outcome": dl.outcome,
                        "http_status": dl.http_status,
                        "error": dl.error,
                        "duration_ms": dl.duration_ms,
                    },
                )
            )

    targets = [order_target(order_id)]
    targets += [t for t in (order.checkout_session_id, order.payment_intent_id) if t]
    actions = session.scalars(select(AuditEntry).where(AuditEntry.target.in_(targets))).all()
    for entry in actions:
        entries.append(
            TimelineEntry(
                entry.at,
                "action",
                f"{entry.action} by {entry.actor}",
                {
                    "actor": entry.actor,
                    "role": entry.role,
                    "action": entry.action,
                    "details": entry.details,
                    "stripe_request_id": entry.stripe_request_id,
                },
            )
        )

    order_of_kind = {
        "attempt": 0,
        "event": 1,
        "state": 2,
        "fulfillment": 3,
        "delivery": 4,
        "action": 5,
    }
    entries.sort(key=lambda e: (e.at, order_of_kind[e.kind]))
    return entries
