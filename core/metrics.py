"""Read-only aggregate queries behind the dashboard pages.

Every function takes a Session (the caller owns it; nothing here writes) and returns a small
frozen dataclass or a pandas DataFrame with fixed columns. Aggregation happens in SQL, written
once for SQLite and PostgreSQL: the only dialect-specific pieces are time bucketing and
durations, in `_bucket` and `_seconds_between`. No function returns more than a few thousand
rows: tables take limit/offset and have a matching count function for their pager.
Attempt counts and volumes that need no per-attempt detail read whole hours from the
trigger-maintained rollup payment_attempt_hourly, and attempts only at the edges of a period
(`_attempt_counts`).

Periods are UTC and half-open: `start` inclusive, `end` exclusive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    cast,
    distinct,
    func,
    literal,
    literal_column,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy import Float as SAFloat
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from core.models import (
    AuditEntry,
    Fulfillment,
    FulfillmentRequest,
    Order,
    OrderTransition,
    PaymentAttempt,
    PaymentAttemptHourly,
    RiskFlag,
    StripeEvent,
    WebhookDelivery,
)

Grain = Literal["hour", "day", "week"]
GRAINS: tuple[Grain, ...] = ("hour", "day", "week")
WEBHOOK_FAILURE_OUTCOMES = ("failed", "rejected")
# Audit rows about an order name it as "order:<id>" (see `order_target`).
ORDER_TARGET_PREFIX = "order:"


def order_target(order_id: int) -> str:
    """The audit_log.target of an action on an order, so its timeline finds it."""
    return f"{ORDER_TARGET_PREFIX}{order_id}"


# --- Periods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a period needs timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError("a period must end after it starts")

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Period:
        """The period of the same length that ends where this one starts."""
        return Period(self.start - self.length, self.start)

    @classmethod
    def last(cls, days: int, now: datetime | None = None) -> Period:
        """The last `days` days up to `now` (default: the current time)."""
        if days <= 0:
            raise ValueError("days must be positive")
        end = (now or datetime.now(UTC)).astimezone(UTC)
        return cls(end - timedelta(days=days), end)


# --- Dialect helpers ---------------------------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _bucket(session: Session, column: Any, grain: Grain) -> ColumnElement[Any]:
    """The UTC start of the hour/day/week (weeks start on Monday) containing `column`.

    Constants are rendered inline and callers group by the label (`_by`), so that the database
    sees one expression, computes it once per row and can reuse it for GROUP BY and ORDER BY."""
    if grain not in GRAINS:
        raise ValueError(f"unknown grain {grain!r}; choose from {', '.join(GRAINS)}")
    if _dialect(session) == "postgresql":
        return func.date_trunc(literal_column(f"'{grain}'"), column, literal_column("'UTC'"))
    # SQLite stores UTC as naive ISO text ("YYYY-MM-DD HH:MM:SS.ffffff"): cut the text for hours
    # and days (far cheaper than parsing it); parsed back in `_to_utc`.
    if grain == "hour":
        return func.substr(column, literal_column("1"), literal_column("13")).concat(
            literal_column("':00:00'")
        )
    if grain == "day":
        return func.substr(column, literal_column("1"), literal_column("10"))
    # 'weekday 1' moves forward to the next Monday (or stays): go back 6 days first.
    return func.strftime(
        literal_column("'%Y-%m-%d'"), column, literal_column("'-6 days'"),
        literal_column("'weekday 1'"),
    )  # fmt: skip


def _by(label: str) -> ColumnElement[Any]:
    """A reference to a selected column by its label, for GROUP BY / ORDER BY."""
    return literal_column(label)


def _seconds_between(session: Session, later: Any, earlier: Any) -> ColumnElement[Any]:
    if _dialect(session) == "postgresql":
        return func.extract("epoch", later - earlier)
    # julianday() is a double in days: about 10 µs of noise, so round to the millisecond.
    return func.round((func.julianday(later) - func.julianday(earlier)) * 86400.0, 3)


def _to_utc(values: pd.Series) -> pd.Series:
    """Timestamps (aware datetimes on PostgreSQL, ISO text on SQLite) as UTC pandas datetimes."""
    if values.empty:
        return pd.Series(pd.to_datetime([], utc=True), index=values.index)
    return pd.to_datetime(values, utc=True, format="mixed")


def _in_period(column: Any, period: Period) -> ColumnElement[bool]:
    return and_(column >= period.start, column < period.end)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _frame(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame([tuple(row) for row in rows], columns=list(columns))


_ONE: ColumnElement[int] = literal_column("1")
_ZERO: ColumnElement[int] = literal_column("0")


def _succeeded() -> ColumnElement[int]:
    return case((PaymentAttempt.outcome == "succeeded", _ONE), else_=_ZERO)


def _failed() -> ColumnElement[int]:
    return case((PaymentAttempt.outcome == "failed", _ONE), else_=_ZERO)


def _succeeded_amount() -> ColumnElement[int]:
    return case((PaymentAttempt.outcome == "succeeded", PaymentAttempt.amount), else_=_ZERO)


# --- Attempt counts: the hourly rollup plus the partial hours at the edges ----------------------

_HOUR = timedelta(hours=1)


def _whole_hours(period: Period) -> tuple[Period | None, list[Period]]:
    """The whole UTC hours inside `period` (None if there are none), and the parts of `period`
    outside them: at most one partial hour at each end."""
    first = period.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < period.start:
        first += _HOUR
    last = period.end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if last <= first:
        return None, [period]
    edges = [Period(a, b) for a, b in ((period.start, first), (last, period.end)) if a < b]
    return Period(first, last), edges


def _attempt_counts(period: Period) -> Subquery:
    """Rows (at, currency, attempts, succeeded, failed, succeeded_amount) whose sums over any
    hour, day or week equal those of the attempts created in `period` in that bucket.

    Whole hours come from payment_attempt_hourly (kept equal to payment_attempts by triggers,
    see migration 0002): about 24 rows a day per currency instead of every attempt. Only the
    partial hours at the edges (periods are rarely hour-aligned) read payment_attempts, each
    attempt as a row of its own. `at` is the hour or the attempt's time: both fall in the same
    bucket, since hours, days and weeks start on the hour in UTC."""
    whole, edges = _whole_hours(period)
    hourly = PaymentAttemptHourly
    parts: list[Select[*tuple[Any, ...]]] = []
    if whole is not None:
        parts.append(
            select(
                hourly.hour.label("at"),
                func.nullif(hourly.currency, "").label("currency"),  # '' stands for NULL
                hourly.attempts.label("attempts"),
                hourly.succeeded.label("succeeded"),
                hourly.failed.label("failed"),
                hourly.succeeded_amount.label("succeeded_amount"),
            ).where(_in_period(hourly.hour, whole))
        )
    for edge in edges:
        parts.append(
            select(
                PaymentAttempt.created.label("at"),
                PaymentAttempt.currency.label("currency"),
                _ONE.label("attempts"),
                _succeeded().label("succeeded"),
                _failed().label("failed"),
                _succeeded_amount().label("succeeded_amount"),
            ).where(_in_period(PaymentAttempt.created, edge))
        )
    if len(parts) == 1:
        return parts[0].subquery("attempt_counts")
    return union_all(*parts).subquery("attempt_counts")


# --- Overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    volume_by_currency: dict[str, int]
    attempts: int
    succeeded: int
    failed: int
    success_rate: float | None
    decline_rate: float | None
    refunded_orders: int
    refunded_amount_by_currency: dict[str, int]
    disputed_orders: int
    webhook_failures: int
    paid_not_fulfilled: int
    open_risk_flags: int


def overview(session: Session, period: Period) -> Overview:
    """Payment health for `period`. `paid_not_fulfilled` and `open_risk_flags` are as of now;
    `paid_not_fulfilled` counts paid orders not fulfilled and paid Checkout Sessions whose
    paying event still fails (see `_paid_sessions_stuck_in_failed_events`)."""
    attempts, succeeded, failed, volume = _attempt_totals(session, period)
    refunds = session.execute(
        select(Order.currency, func.count(), func.coalesce(func.sum(Order.amount_refunded), 0))
        .where(_in_period(Order.refunded_at, period))
        .group_by(Order.currency)
    ).all()
    disputed = session.execute(
        select(func.count()).select_from(Order).where(_in_period(Order.disputed_at, period))
    ).scalar_one()
    webhook_failures = session.execute(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(
            _in_period(WebhookDelivery.received_at, period),
            WebhookDelivery.outcome.in_(WEBHOOK_FAILURE_OUTCOMES),
        )
    ).scalar_one()
    paid_not_fulfilled = session.execute(
        select(func.count()).select_from(Order).where(Order.status == "paid")
    ).scalar_one() + _paid_sessions_stuck_in_failed_events(session)
    open_flags = session.execute(
        select(func.count()).select_from(RiskFlag).where(RiskFlag.status == "open")
    ).scalar_one()
    return Overview(
        volume_by_currency=dict(sorted(volume.items())),
        attempts=attempts,
        succeeded=succeeded,
        failed=failed,
        success_rate=_rate(succeeded, attempts),
        decline_rate=_rate(failed, attempts),
        refunded_orders=sum(int(row[1]) for row in refunds),
        refunded_amount_by_currency=dict(
            sorted(((row[0] or "unknown"), int(row[2])) for row in refunds)
        ),
        disputed_orders=int(disputed),
        webhook_failures=int(webhook_failures),
        paid_not_fulfilled=int(paid_not_fulfilled),
        open_risk_flags=int(open_flags),
    )


def _attempt_totals(session: Session, period: Period) -> tuple[int, int, int, dict[str, int]]:
    """Attempts, successes, failures and succeeded volume per currency in `period`."""
    counts = _attempt_counts(period)
    rows = session.execute(
        select(
            counts.c.currency,
            func.sum(counts.c.attempts),
            func.sum(counts.c.succeeded),
            func.sum(counts.c.failed),
            func.sum(counts.c.succeeded_amount),
        ).group_by(counts.c.currency)
    ).all()
    # Volume per currency with at least one success, as a GROUP BY of the successes gives.
    volume = {(r[0] or "unknown"): int(r[4]) for r in rows if int(r[2])}
    return (sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows),
            sum(int(r[3]) for r in rows), volume)  # fmt: skip


# Events whose successful processing pays an order (and fulfils it in the same transaction).
PAYING_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def _paid_sessions_stuck_in_failed_events(session: Session) -> int:
    """Checkout Sessions whose paying event keeps failing (e.g. fulfilment refused it): the
    failed transaction took the order with it, so no order row says "paid", yet the customer
    paid. Counted once per session, and not when a paid order exists for it."""
    paid_order = (
        select(Order.id)
        .where(Order.checkout_session_id == StripeEvent.object_id, Order.paid_at.is_not(None))
        .exists()
    )
    return int(
        session.execute(
            select(func.count(distinct(StripeEvent.object_id))).where(
                StripeEvent.status == "failed",
                StripeEvent.type.in_(PAYING_EVENTS),
                ~paid_order,
            )
        ).scalar_one()
    )


# --- Payments ----------------------------------------------------------------------------------

RATE_COLUMNS = ("bucket", "attempts", "succeeded", "failed", "success_rate", "decline_rate")


def payment_rates(
    session: Session, period: Period, grain: Grain, dedupe_cards: bool = False
) -> pd.DataFrame:
    """Attempts, successes and failures per time bucket.

    With `dedupe_cards`, as Stripe recommends for authorization rates, a card (fingerprint)
    retried several times in a bucket counts once: as a success if any of its attempts in that
    bucket succeeded, else as a failure. Attempts without a fingerprint count one by one.
    That needs every attempt of the period; without it, whole hours come from the rollup."""
    if dedupe_cards:
        bucket = _bucket(session, PaymentAttempt.created, grain).label("bucket")
        card = func.coalesce(PaymentAttempt.card_fingerprint, PaymentAttempt.id).label("card")
        per_card = (
            select(bucket, card, func.max(_succeeded()).label("ok"))
            .where(_in_period(PaymentAttempt.created, period))
            .group_by(_by("bucket"), _by("card"))
            .subquery()
        )
        stmt: Select[Any] = (
            select(
                per_card.c.bucket.label("bucket"),
                func.count(),
                func.sum(per_card.c.ok),
                func.sum(1 - per_card.c.ok),
            )
            .group_by(_by("bucket"))
            .order_by(_by("bucket"))
        )
    else:
        counts = _attempt_counts(period)
        stmt = (
            select(
                _bucket(session, counts.c.at, grain).label("bucket"),
                func.sum(counts.c.attempts),
                func.sum(counts.c.succeeded),
                func.sum(counts.c.failed),
            )
            .group_by(_by("bucket"))
            .order_by(_by("bucket"))
        )
    frame = _frame(session.execute(stmt).all(), RATE_COLUMNS[:4])
    frame["bucket"] = _to_utc(frame["bucket"])
    for column in ("attempts", "succeeded", "failed"):
        frame[column] = frame[column].astype("int64")
    attempts = frame["attempts"].where(frame["attempts"] > 0)
    frame["success_rate"] = (frame["succeeded"] / attempts).astype("float64")
    frame["decline_rate"] = (frame["failed"] / attempts).astype("float64")
    return frame[list(RATE_COLUMNS)]


def decline_reasons(session: Session, period: Period) -> pd.DataFrame:
    """Failed attempts by reason: decline code, else failure code, else "unknown"."""
    reason = func.coalesce(
        PaymentAttempt.decline_code, PaymentAttempt.failure_code, literal("unknown")
    ).label("reason_code")  # not "decline_code": GROUP BY would take the column of that name
    failures = func.count().label("failures")
    rows = session.execute(
        select(reason, failures)
        .where(_in_period(PaymentAttempt.created, period), PaymentAttempt.outcome == "failed")
        .group_by(_by("reason_code"))
        .order_by(failures.desc(), _by("reason_code"))
    ).all()
    frame = _frame(rows, ("decline_code", "failures"))
    frame["failures"] = frame["failures"].astype("int64")
    total = int(frame["failures"].sum())
    frame["share"] = (
        (frame["failures"] / total).astype("float64") if total else pd.Series(dtype="float64")
    )
    return frame


def volume_by_currency(session: Session, period: Period, grain: Grain) -> pd.DataFrame:
    """Succeeded payment volume (minor units) and count per bucket and currency."""
    counts = _attempt_counts(period)
    bucket = _bucket(session, counts.c.at, grain).label("bucket")
    currency = func.coalesce(counts.c.currency, literal("unknown")).label("currency_code")
    rows = session.execute(
        select(bucket, currency, func.sum(counts.c.succeeded_amount), func.sum(counts.c.succeeded))
        .where(counts.c.succeeded > 0)
        .group_by(_by("bucket"), _by("currency_code"))
        .order_by(_by("bucket"), _by("currency_code"))
    ).all()
    frame = _frame(rows, ("bucket", "currency", "amount", "payments"))
    frame["bucket"] = _to_utc(frame["bucket"])
    frame["amount"] = frame["amount"].astype("int64")
    frame["payments"] = frame["payments"].astype("int64")
    return frame


# --- Orders: search ----------------------------------------------------------------------------

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
_LAST4 = re.compile(r"^\d{4}$")
_ORDER_ID = re.compile(r"^\d{1,18}$")
MAX_PAGE = 500


def _order_match(query: str) -> ColumnElement[bool] | None:
    """The condition selecting orders for a search text; each branch is an indexed lookup."""
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
    upper = lowered[:-1] + chr(ord(lowered[-1]) + 1)
    escaped = lowered.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return and_(
        email >= lowered,
        email < upper,
        email.like(escaped + "%", escape="\\"),
    )


def search_orders(
    session: Session, query: str, *, limit: int = 50, offset: int = 0
) -> pd.DataFrame:
    """Orders matching an email (case-insensitive, exact or prefix), an order id, a Checkout
    Session id (cs_), PaymentIntent id (pi_), customer id (cus_), charge id (ch_) or card last4
    (4 digits, which may also be an order id). Newest first."""
    condition = _order_match(query)
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


def count_orders(session: Session, query: str) -> int:
    """How many orders `search_orders` would page through."""
    condition = _order_match(query)
    if condition is None:
        return 0
    return int(
        session.execute(select(func.count()).select_from(Order).where(condition)).scalar_one()
    )


# --- Orders: one order and its timeline --------------------------------------------------------


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


# --- Webhooks ----------------------------------------------------------------------------------


def deliveries_by_day(session: Session, period: Period) -> pd.DataFrame:
    """Webhook deliveries per UTC day and outcome (processed, duplicate, ignored, rejected,
    failed)."""
    day = _bucket(session, WebhookDelivery.received_at, "day").label("day")
    rows = session.execute(
        select(day, WebhookDelivery.outcome, func.count())
        .where(_in_period(WebhookDelivery.received_at, period))
        .group_by(_by("day"), WebhookDelivery.outcome)
        .order_by(_by("day"), WebhookDelivery.outcome)
    ).all()
    frame = _frame(rows, ("day", "outcome", "deliveries"))
    frame["day"] = _to_utc(frame["day"])
    frame["deliveries"] = frame["deliveries"].astype("int64")
    return frame


@dataclass(frozen=True)
class RetryStats:
    events: int
    events_with_retries: int
    max_deliveries: int
    distribution: pd.DataFrame  # deliveries, events

    @property
    def retry_share(self) -> float | None:
        return _rate(self.events_with_retries, self.events)


def retry_stats(session: Session, period: Period) -> RetryStats:
    """How many deliveries each event first received in `period` took."""
    rows = session.execute(
        select(StripeEvent.deliveries, func.count())
        .where(_in_period(StripeEvent.first_received_at, period))
        .group_by(StripeEvent.deliveries)
        .order_by(StripeEvent.deliveries)
    ).all()
    frame = _frame(rows, ("deliveries", "events"))
    frame = frame.astype({"deliveries": "int64", "events": "int64"})
    return RetryStats(
        events=int(frame["events"].sum()),
        events_with_retries=int(frame.loc[frame["deliveries"] > 1, "events"].sum()),
        max_deliveries=int(frame["deliveries"].max()) if len(frame) else 0,
        distribution=frame,
    )


def signature_failures(session: Session, period: Period) -> pd.DataFrame:
    """Rejected deliveries (bad signature, stale timestamp, malformed body...) by reason."""
    reason = func.coalesce(WebhookDelivery.rejection_reason, literal("unknown")).label("reason")
    count = func.count().label("deliveries")
    rows = session.execute(
        select(reason, count)
        .where(
            _in_period(WebhookDelivery.received_at, period),
            WebhookDelivery.outcome == "rejected",
        )
        .group_by(_by("reason"))
        .order_by(count.desc(), _by("reason"))
    ).all()
    frame = _frame(rows, ("reason", "deliveries"))
    frame["deliveries"] = frame["deliveries"].astype("int64")
    return frame


def _processing_failure_filter(period: Period) -> ColumnElement[bool]:
    return and_(
        _in_period(WebhookDelivery.received_at, period), WebhookDelivery.outcome == "failed"
    )


def processing_failures(
    session: Session, period: Period, *, limit: int = 50, offset: int = 0
) -> pd.DataFrame:
    """Deliveries whose handler failed (answered 500), newest first."""
    rows = session.execute(
        select(
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
            WebhookDelivery.received_at,
            WebhookDelivery.error,
        )
        .where(_processing_failure_filter(period))
        .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id.desc())
        .limit(max(0, min(limit, MAX_PAGE)))
        .offset(max(0, offset))
    ).all()
    frame = _frame(rows, ("event_id", "event_type", "received_at", "error"))
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)
    return frame


def count_processing_failures(session: Session, period: Period) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(_processing_failure_filter(period))
        ).scalar_one()
    )


LAG_COLUMNS = ("measure", "events", "p50_seconds", "p95_seconds", "max_seconds")


def _nearest_rank(values: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The nearest-rank percentile of a sorted histogram (value, count)."""
    rank = max(1, math.ceil(q * sum(counts)))
    seen = 0
    for value, count in zip(values, counts, strict=True):
        seen += count
        if seen >= rank:
            return value
    return values[-1]


def _lag_stats(
    session: Session, seconds: ColumnElement[Any], where: ColumnElement[bool]
) -> tuple[int, float | None, float | None, float | None]:
    """(events, p50, p95, max) of `seconds`, nearest rank (= percentile_disc)."""
    if _dialect(session) == "postgresql":
        n, p50, p95, top = session.execute(
            select(
                func.count(),
                func.percentile_disc(0.5).within_group(seconds),
                func.percentile_disc(0.95).within_group(seconds),
                func.max(seconds),
            ).where(where)
        ).one()
        if not n:
            return 0, None, None, None
        return int(n), float(p50), float(p95), float(top)
    # SQLite has no percentiles: a histogram at millisecond resolution (a few thousand rows at
    # most in practice), aggregated in SQL, then ranked here.
    value = func.round(seconds, literal_column("3")).label("lag")
    rows = session.execute(
        select(value, func.count()).where(where).group_by(_by("lag")).order_by(_by("lag"))
    ).all()
    if not rows:
        return 0, None, None, None
    values = [float(row[0]) for row in rows]
    counts = [int(row[1]) for row in rows]
    return (
        sum(counts),
        _nearest_rank(values, counts, 0.50),
        _nearest_rank(values, counts, 0.95),
        values[-1],
    )


def webhook_lag(session: Session, period: Period) -> pd.DataFrame:
    """Seconds from Stripe's `created` to our first receipt, and to processing, for events
    first received in `period`: one row per measure with p50, p95 and max (nearest rank)."""
    base = _in_period(StripeEvent.first_received_at, period)
    measures = (
        ("to_first_receipt", StripeEvent.first_received_at, base),
        (
            "to_processed",
            StripeEvent.processed_at,
            and_(base, StripeEvent.processed_at.is_not(None)),
        ),
    )
    rows = []
    for name, column, where in measures:
        seconds = cast(_seconds_between(session, column, StripeEvent.created), SAFloat)
        rows.append((name, *_lag_stats(session, seconds, where)))
    frame = _frame(rows, LAG_COLUMNS)
    return frame.astype(
        {
            "events": "int64",
            "p50_seconds": "float64",
            "p95_seconds": "float64",
            "max_seconds": "float64",
        }
    )


def oldest_failing_events(session: Session, limit: int = 20) -> pd.DataFrame:
    """Events whose processing still fails, oldest (by Stripe's created) first."""
    rows = session.execute(
        select(
            StripeEvent.id,
            StripeEvent.type,
            StripeEvent.created,
            StripeEvent.first_received_at,
            StripeEvent.deliveries,
            StripeEvent.last_error,
        )
        .where(StripeEvent.status == "failed")
        .order_by(StripeEvent.created, StripeEvent.id)
        .limit(max(0, min(limit, MAX_PAGE)))
    ).all()
    frame = _frame(rows, ("id", "type", "created", "first_received_at", "deliveries", "last_error"))
    frame["created"] = pd.to_datetime(frame["created"], utc=True)
    frame["first_received_at"] = pd.to_datetime(frame["first_received_at"], utc=True)
    frame["deliveries"] = frame["deliveries"].astype("int64")
    return frame


def count_failing_events(session: Session) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(StripeEvent).where(StripeEvent.status == "failed")
        ).scalar_one()
    )
