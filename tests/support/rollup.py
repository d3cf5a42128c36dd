"""The hourly rollup as it should be, computed here from payment_attempts' rows, and as it is."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import Connection, select

from core.models import PaymentAttempt, PaymentAttemptHourly

Key = tuple[datetime, str]
Sums = tuple[int, int, int, int]  # attempts, succeeded, failed, succeeded_amount


def expected(conn: Connection) -> dict[Key, Sums]:
    """GROUP BY (UTC hour of created, currency or '') of payment_attempts, in Python."""
    sums: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    rows = conn.execute(
        select(
            PaymentAttempt.created,
            PaymentAttempt.currency,
            PaymentAttempt.outcome,
            PaymentAttempt.amount,
        )
    )
    for created, currency, outcome, amount in rows:
        hour = created.replace(minute=0, second=0, microsecond=0)
        row = sums[(hour, currency or "")]
        row[0] += 1
        row[1] += outcome == "succeeded"
        row[2] += outcome == "failed"
        row[3] += amount if outcome == "succeeded" else 0
    return {key: (a, s, f, v) for key, (a, s, f, v) in sums.items()}


def actual(conn: Connection) -> dict[Key, Sums]:
    hourly = PaymentAttemptHourly
    rows = conn.execute(
        select(
            hourly.hour,
            hourly.currency,
            hourly.attempts,
            hourly.succeeded,
            hourly.failed,
            hourly.succeeded_amount,
        )
    )
    return {(h, c): (int(a), int(s), int(f), int(v)) for h, c, a, s, f, v in rows}
