"""Webhook delivery health: deliveries, retries, signature and processing failures, lag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    and_,
    cast,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy import Float as SAFloat
from sqlalchemy.orm import Session

from core.console.orders import MAX_PAGE
from core.console.period import (
    Period,
    _bucket,
    _by,
    _dialect,
    _frame,
    _in_period,
    _rate,
    _seconds_between,
    _to_utc,
)
from core.models import (
    StripeEvent,
    WebhookDelivery,
    WebhookRejection,
)

# Delivery rows that are failures. Rejected requests are counted in webhook_rejections (their
# delivery rows are only a bounded sample): add `rejected_deliveries` to these.
WEBHOOK_FAILURE_OUTCOMES = ("failed", "unprocessable")
NOT_APPLIED_STATUSES = ("failed", "unprocessable")


def rejected_deliveries(session: Session, period: Period) -> int:
    """Rejected requests in `period` (counted per minute)."""
    return int(
        session.execute(
            select(func.coalesce(func.sum(WebhookRejection.deliveries), 0)).where(
                _in_period(WebhookRejection.minute, period)
            )
        ).scalar_one()
    )


def deliveries_by_day(session: Session, period: Period) -> pd.DataFrame:
    """Webhook deliveries per UTC day and outcome (processed, duplicate, ignored, rejected,
    failed)."""
    day = _bucket(session, WebhookDelivery.received_at, "day").label("day")
    rows: list[Any] = list(
        session.execute(
            select(day, WebhookDelivery.outcome, func.count())
            .where(
                _in_period(WebhookDelivery.received_at, period),
                WebhookDelivery.outcome != "rejected",  # a sample only: counted below
            )
            .group_by(_by("day"), WebhookDelivery.outcome)
        ).all()
    )
    rejected_day = _bucket(session, WebhookRejection.minute, "day").label("day")
    rows += session.execute(
        select(rejected_day, literal("rejected"), func.sum(WebhookRejection.deliveries))
        .where(_in_period(WebhookRejection.minute, period))
        .group_by(_by("day"))
    ).all()
    rows.sort(key=lambda row: (str(row[0]), row[1]))
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
    count = func.sum(WebhookRejection.deliveries).label("deliveries")
    rows = session.execute(
        select(WebhookRejection.reason, count)
        .where(_in_period(WebhookRejection.minute, period))
        .group_by(WebhookRejection.reason)
        .order_by(count.desc(), WebhookRejection.reason)
    ).all()
    frame = _frame(rows, ("reason", "deliveries"))
    frame["deliveries"] = frame["deliveries"].astype("int64")
    return frame


def _processing_failure_filter(period: Period) -> ColumnElement[bool]:
    return and_(
        _in_period(WebhookDelivery.received_at, period),
        WebhookDelivery.outcome.in_(WEBHOOK_FAILURE_OUTCOMES),
    )


def processing_failures(
    session: Session, period: Period, *, limit: int = 50, offset: int = 0
) -> pd.DataFrame:
    """Deliveries whose handler failed (answered 500) or that could not be applied
    (unprocessable, answered 200), newest first."""
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
    """Events not applied: still failing, or unprocessable (with the reason in last_error),
    oldest (by Stripe's created) first."""
    rows = session.execute(
        select(
            StripeEvent.id,
            StripeEvent.status,
            StripeEvent.type,
            StripeEvent.created,
            StripeEvent.first_received_at,
            StripeEvent.deliveries,
            StripeEvent.last_error,
        )
        .where(StripeEvent.status.in_(NOT_APPLIED_STATUSES))
        .order_by(StripeEvent.created, StripeEvent.id)
        .limit(max(0, min(limit, MAX_PAGE)))
    ).all()
    frame = _frame(
        rows, ("id", "status", "type", "created", "first_received_at", "deliveries", "last_error")
    )
    frame["created"] = pd.to_datetime(frame["created"], utc=True)
    frame["first_received_at"] = pd.to_datetime(frame["first_received_at"], utc=True)
    frame["deliveries"] = frame["deliveries"].astype("int64")
    return frame


def count_failing_events(session: Session) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(StripeEvent)
            .where(StripeEvent.status.in_(NOT_APPLIED_STATUSES))
        ).scalar_one()
    )
