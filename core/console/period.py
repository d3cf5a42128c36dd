"""Periods and the SQL pieces every console query shares.

Every console read takes a Session (the caller owns it; nothing here writes). Aggregation
happens in SQL, written once for SQLite and PostgreSQL: the only dialect-specific pieces are
time bucketing and durations, in `bucket` and `seconds_between`. Periods are UTC and half-open:
`start` inclusive, `end` exclusive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal_column,
)
from sqlalchemy.orm import Session

from core.models import (
    PaymentAttempt,
)

Grain = Literal["hour", "day", "week"]
GRAINS: tuple[Grain, ...] = ("hour", "day", "week")


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


_LAST4 = re.compile(r"^\d{4}$")


# --- Partial buckets (issue 14) ------------------------------------------------------------------

GRAIN_LENGTH: dict[Grain, timedelta] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


def is_partial(bucket_start: datetime, grain: Grain, period: Period) -> bool:
    """Whether the hour/day/week starting at `bucket_start` lies only partly inside `period`
    (its first and last buckets, usually): its counts cover less time than the others'."""
    return bucket_start < period.start or bucket_start + GRAIN_LENGTH[grain] > period.end
