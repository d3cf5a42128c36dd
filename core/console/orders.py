"""Order lookup for support: search, one order, and its timeline.

Tables take limit/offset and have a matching count function for their pager.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
    union,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from core.console.period import _LAST4, _frame
from core.models import (
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
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
    whole address only: a prefix or a domain would let its result count (or its presence)
    spell out a masked address letter by letter (issue 12, finding 5)."""
    text = normalized_query(query)
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
    email = func.lower(Order.customer_email)
    if not full_emails:
        return email == lowered if _WHOLE_EMAIL.match(lowered) else false()
    if is_domain_query(text):
        return _domain_match(lowered)
    # An email, or the start of one: a range on the lower(email) index, then an exact prefix
    # test (the range alone could be loose under a linguistic collation).
    escaped = lowered.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    prefix = email.like(escaped + "%", escape="\\")
    if ord(lowered[-1]) >= sys.maxunicode:  # no character sorts after it: no upper bound
        return and_(email >= lowered, prefix)
    upper = lowered[:-1] + chr(ord(lowered[-1]) + 1)
    return and_(email >= lowered, email < upper, prefix)


def search_orders(
    session: Session, query: str, *, limit: int = 50, offset: int = 0, full_emails: bool = True
) -> pd.DataFrame:
    """Orders matching an email (case-insensitive, exact or prefix; "@domain" for a whole
    domain), an order id (with or without "#"), a Checkout Session id (cs_), PaymentIntent id
    (pi_), customer id (cus_), charge id (ch_) or card last4 (4 digits, which may also be an
    order id: that order comes first). Newest first; `matched` says which field matched.
    Without `full_emails` an email must be typed in full (see `_order_match`)."""
    condition = _order_match(query, full_emails=full_emails)
    if condition is None:
        return _frame([], SEARCH_COLUMNS)
    columns = [getattr(Order, name) for name in ORDER_COLUMNS]
    label, rank = _match_label(normalized_query(query))
    rows = session.execute(
        select(*columns, label)
        .where(condition)
        .order_by(rank, Order.created_at.desc(), Order.id.desc())
        .limit(max(0, min(limit, MAX_PAGE)))
        .offset(max(0, offset))
    ).all()
    frame = _frame(rows, SEARCH_COLUMNS)
    for column in ("created_at", "paid_at", "fulfilled_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["id"] = frame["id"].astype("int64")
    frame["amount_total"] = frame["amount_total"].astype("int64")
    return frame


# --- What a search text means (kept apart from the matching rules above) ---------------------

SEARCH_COLUMNS = (*ORDER_COLUMNS, "matched")
_HASH_ORDER_ID = re.compile(r"^#\s*(\d{1,18})$")
_DOMAIN = re.compile(r"^@[^\s@]+$")


def normalized_query(query: str) -> str:
    """The search text as the rules read it: trimmed, and "#1461" (how the console prints an
    order) read as the order id 1461."""
    text = query.strip()
    hashed = _HASH_ORDER_ID.match(text)
    return hashed.group(1) if hashed else text


def search_orders_empty() -> pd.DataFrame:
    """The search result with no rows (its columns and types all the same)."""
    return _frame([], SEARCH_COLUMNS)


def is_domain_query(query: str) -> bool:
    """ "@example.com": every order from an email domain (only for roles that see emails)."""
    return bool(_DOMAIN.match(query.strip()))


def _domain_match(lowered: str) -> ColumnElement[bool]:
    # A suffix cannot use the email index: a scan of orders, bounded by the page size.
    escaped = lowered.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(Order.customer_email).like("%" + escaped, escape="\\")


def _match_label(text: str) -> tuple[ColumnElement[str], ColumnElement[int]]:
    """Which field matched, as a column of each result row, and the rank that puts an exact
    order id first (a 4-digit text is an order id or a card's last4)."""
    lowered = text.lower()
    if _LAST4.match(text):
        exact = Order.id == int(text)
        return (
            case((exact, "order id"), else_="card last4").label("matched"),
            case((exact, 0), else_=1),
        )
    named = next(
        (name for prefix, name in _PREFIX_LABELS if lowered.startswith(prefix)),
        "order id" if _ORDER_ID.match(text) else None,
    )
    if named is None:
        named = "email domain" if is_domain_query(text) else "email"
    return literal(named).label("matched"), literal(0)


_PREFIX_LABELS = (
    ("cs_", "Checkout Session"),
    ("pi_", "PaymentIntent"),
    ("cus_", "customer"),
    ("ch_", "charge"),
    ("py_", "charge"),
)


@dataclass(frozen=True)
class Exact:
    """What a search text names exactly: one order, or one customer."""

    order_id: int | None = None
    customer_id: str | None = None


def exact_match(session: Session, query: str) -> Exact | None:
    """The order (order id with or without "#", Checkout Session, PaymentIntent or charge id)
    or customer (cus_) that `query` names exactly, if it exists; None for anything else
    (emails, card last4 without an order of that id)."""
    text = normalized_query(query)
    lowered = text.lower()
    if lowered.startswith("cus_"):
        found = session.execute(
            select(Order.customer_id).where(Order.customer_id == text).limit(1)
        ).scalar_one_or_none()
        return Exact(customer_id=found) if found else None
    if _ORDER_ID.match(text):
        condition: ColumnElement[bool] = Order.id == int(text)
    elif lowered.startswith("cs_"):
        condition = Order.checkout_session_id == text
    elif lowered.startswith("pi_"):
        condition = Order.payment_intent_id == text
    elif lowered.startswith(("ch_", "py_")):
        condition = (
            Order.id
            == select(PaymentAttempt.order_id).where(PaymentAttempt.id == text).scalar_subquery()
        )
    else:
        return None
    order_id = session.execute(select(Order.id).where(condition)).scalar_one_or_none()
    return Exact(order_id=int(order_id)) if order_id is not None else None


@dataclass(frozen=True)
class CustomerSummary:
    customer_id: str
    email: str | None
    orders: int
    paid_orders: int
    first_order_at: datetime
    last_order_at: datetime


def customer_summary(session: Session, customer_id: str) -> CustomerSummary | None:
    """One Stripe customer as the console knows them: their latest email and order counts."""
    paid = func.count(Order.paid_at)
    row = session.execute(
        select(func.count(), paid, func.min(Order.created_at), func.max(Order.created_at))
        .select_from(Order)
        .where(Order.customer_id == customer_id)
    ).one()
    if not row[0]:
        return None
    email = session.execute(
        select(Order.customer_email)
        .where(Order.customer_id == customer_id, Order.customer_email.is_not(None))
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return CustomerSummary(customer_id, email, int(row[0]), int(row[1]), row[2], row[3])


def count_orders(session: Session, query: str, *, full_emails: bool = True) -> int:
    """How many orders `search_orders` would page through."""
    condition = _order_match(query, full_emails=full_emails)
    if condition is None:
        return 0
    return int(
        session.execute(select(func.count()).select_from(Order).where(condition)).scalar_one()
    )


@dataclass(frozen=True)
class Refund:
    """One refund of an order's payment, as Stripe's charge.refunded events describe it."""

    amount: int
    currency: str | None
    at: datetime
    reason: str | None
    refund_id: str | None
    event_id: str


@dataclass(frozen=True)
class Dispute:
    """The customer's dispute, from Stripe's charge.dispute.* event payload."""

    reason: str | None
    amount: int | None
    currency: str | None
    respond_by: datetime | None
    status: str | None
    at: datetime
    dispute_id: str | None
    event_id: str


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
    refunds: tuple[Refund, ...] = ()
    dispute: Dispute | None = None

    @property
    def last_refund_at(self) -> datetime | None:
        """When money last went back to the customer (the header's "refunded ... on")."""
        return max((refund.at for refund in self.refunds), default=self.refunded_at)


_COLUMN_FIELDS = tuple(
    name for name in OrderDetail.__dataclass_fields__ if name not in ("refunds", "dispute")
)


def get_order(session: Session, order_id: int) -> OrderDetail | None:
    """One order with the facts support is asked about: refunds (amounts, when) and the dispute
    (reason, amount, respond-by date), read from the stored Stripe event payloads."""
    order = session.get(Order, order_id)
    if order is None:
        return None
    events = session.scalars(
        select(StripeEvent)
        .where(StripeEvent.id.in_(select(related_event_ids(session, order).c.id)))
        .where(StripeEvent.type.in_(REFUND_EVENTS + DISPUTE_EVENTS))
    ).all()
    return OrderDetail(
        **{name: getattr(order, name) for name in _COLUMN_FIELDS},
        refunds=refunds_from_events(events),
        dispute=dispute_from_events(events),
    )


# --- Facts from stored Stripe payloads -------------------------------------------------------

REFUND_EVENTS = ("charge.refunded", "charge.refund.updated")
DISPUTE_EVENTS = (
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
)


def payload_object(event: StripeEvent) -> dict[str, Any]:
    """The event's data.object, or {} when the stored payload is not shaped like an event."""
    data = event.payload.get("data") if isinstance(event.payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time_or_none(value: object) -> datetime | None:
    seconds = _int_or_none(value)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _charge_refunds(event: StripeEvent, already: int) -> list[Refund]:
    """The refunds one charge.refunded event reports: each refund object of charge.refunds when
    Stripe included them, otherwise what amount_refunded grew by since the previous event."""
    charge = payload_object(event)
    currency = _str_or_none(charge.get("currency"))
    listed = charge.get("refunds")
    items = listed.get("data") if isinstance(listed, dict) else None
    found = [
        Refund(
            amount=_int_or_none(item.get("amount")) or 0,
            currency=_str_or_none(item.get("currency")) or currency,
            at=_time_or_none(item.get("created")) or event.created,
            reason=_str_or_none(item.get("reason")),
            refund_id=_str_or_none(item.get("id")),
            event_id=event.id,
        )
        for item in items or []
        if isinstance(item, dict)
    ]
    if found:
        return found
    total = _int_or_none(charge.get("amount_refunded")) or 0
    if total <= already:
        return []
    return [Refund(total - already, currency, event.created, None, None, event.id)]


def refunds_from_events(events: Sequence[StripeEvent]) -> tuple[Refund, ...]:
    """Every refund named by the order's refund events, each once, oldest first."""
    by_key: dict[str, Refund] = {}
    refunded_by_charge: dict[str, int] = {}  # amount_refunded is a running total per charge
    for event in sorted(events, key=lambda e: (e.created, e.id)):
        if event.type not in REFUND_EVENTS:
            continue
        charge = payload_object(event)
        charge_id = str(charge.get("id") or "")
        already = refunded_by_charge.get(charge_id, 0)
        for refund in _charge_refunds(event, already):
            by_key.setdefault(refund.refund_id or f"{event.id}:{refund.amount}", refund)
        total = _int_or_none(charge.get("amount_refunded")) or 0
        refunded_by_charge[charge_id] = max(already, total)
    return tuple(sorted(by_key.values(), key=lambda r: (r.at, r.refund_id or "")))


def dispute_of(event: StripeEvent) -> Dispute:
    dispute = payload_object(event)
    evidence = dispute.get("evidence_details")
    due_by = evidence.get("due_by") if isinstance(evidence, dict) else None
    return Dispute(
        reason=_str_or_none(dispute.get("reason")),
        amount=_int_or_none(dispute.get("amount")),
        currency=_str_or_none(dispute.get("currency")),
        respond_by=_time_or_none(due_by),
        status=_str_or_none(dispute.get("status")),
        at=event.created,
        dispute_id=_str_or_none(dispute.get("id")),
        event_id=event.id,
    )


def dispute_from_events(events: Sequence[StripeEvent]) -> Dispute | None:
    """The dispute as its latest event describes it (the first one's time is when it opened)."""
    found = sorted((e for e in events if e.type in DISPUTE_EVENTS), key=lambda e: (e.created, e.id))
    if not found:
        return None
    latest = dispute_of(found[-1])
    return replace(latest, at=found[0].created)


def related_event_ids(
    session: Session,
    order: Order,
    *,
    attempts: Sequence[PaymentAttempt] | None = None,
    transitions: Sequence[OrderTransition] | None = None,
) -> Subquery:
    """The ids of the order's Stripe events: about its session, intent or charges, or named by
    a row they wrote (a dispute event is about a dp_ object, but its transition names it)."""
    if attempts is None:
        attempts = session.scalars(select(PaymentAttempt).where(attempt_filter(order))).all()
    if transitions is None:
        transitions = session.scalars(
            select(OrderTransition).where(OrderTransition.order_id == order.id)
        ).all()
    object_ids = {order.checkout_session_id, order.payment_intent_id}
    object_ids.update(attempt.id for attempt in attempts)
    object_ids.discard(None)
    event_ids = {tr.event_id for tr in transitions} | {a.event_id for a in attempts}
    event_ids.add(
        session.execute(
            select(Fulfillment.event_id).where(Fulfillment.order_id == order.id)
        ).scalar_one_or_none()
    )
    event_ids.discard(None)
    return union(
        select(StripeEvent.id).where(StripeEvent.object_id.in_(sorted(object_ids))),
        select(StripeEvent.id).where(StripeEvent.id.in_(sorted(event_ids))),
    ).subquery()


def attempt_filter(order: Order) -> ColumnElement[bool]:
    """The order's payment attempts: linked to it, or on its PaymentIntent."""
    conditions = [PaymentAttempt.order_id == order.id]
    if order.payment_intent_id:
        conditions.append(PaymentAttempt.payment_intent_id == order.payment_intent_id)
    return or_(*conditions)
