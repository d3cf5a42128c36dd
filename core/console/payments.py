"""Payment health for finance: the Overview, success and decline rates, decline reasons,
volumes.

Attempt counts and volumes that need no per-attempt detail read whole hours from the
trigger-maintained rollup payment_attempt_hourly, and attempts only at the edges of a period
(`_attempt_counts`). Each function returns a small frozen dataclass or a DataFrame with fixed
columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import (
    Select,
    distinct,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from core.console.period import (
    _ONE,
    Grain,
    Period,
    _bucket,
    _by,
    _failed,
    _frame,
    _in_period,
    _rate,
    _succeeded,
    _succeeded_amount,
    _to_utc,
)
from core.console.webhooks import WEBHOOK_FAILURE_OUTCOMES, rejected_deliveries
from core.models import (
    Order,
    PaymentAttempt,
    PaymentAttemptHourly,
    RiskFlag,
    StripeEvent,
    WebhookDelivery,
)

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
    ).scalar_one() + rejected_deliveries(session, period)
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
