"""payment_attempt_hourly, on SQLite and PostgreSQL: the triggers keep it equal to the GROUP BY
of payment_attempts through any inserts, upserts, updates and deletes; and the metrics that
read it give what a scan of every attempt gives, for periods that do not start or end on the
hour."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.console import payments
from core.console.period import GRAINS, Grain, Period
from core.db import session_scope
from core.models import PaymentAttempt
from tests.support import rollup
from tests.support import stripe_objects as so
from tests.webhook.test_webhook_path import deliver

BASE = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- The triggers ------------------------------------------------------------------------------

# Four hours and a bit, so that attempts share hours; on the hour, just before and just after.
instants = st.builds(
    lambda minutes, micros: BASE + timedelta(minutes=minutes, microseconds=micros),
    st.integers(0, 4 * 60),
    st.sampled_from([0, 1, 999_999, 59 * 1_000_000 + 999_999]),
)
attempt_ids = st.sampled_from([f"ch_{n}" for n in range(8)])
fields = st.fixed_dictionaries(
    {},
    optional={
        "created": instants,
        "currency": st.sampled_from(["usd", "eur", None]),
        "outcome": st.sampled_from(["succeeded", "failed", "processing"]),
        "amount": st.integers(0, 100_000),
        "card_brand": st.sampled_from(["visa", "amex"]),  # not summed: changes nothing
    },
)
full_attempts = st.fixed_dictionaries(
    {
        "created": instants,
        "currency": st.sampled_from(["usd", "eur", None]),
        "outcome": st.sampled_from(["succeeded", "failed", "processing"]),
        "amount": st.integers(0, 100_000),
    }
)


@dataclass(frozen=True)
class Op:
    kind: str
    attempt_id: str | None = None
    values: dict[str, Any] | None = None


operations = st.lists(
    st.one_of(
        st.builds(Op, st.just("upsert"), attempt_ids, full_attempts),
        st.builds(Op, st.just("update"), attempt_ids, fields),
        st.builds(Op, st.just("delete"), attempt_ids),
        st.builds(Op, st.just("update_all"), st.none(), fields),
        st.builds(Op, st.just("delete_failed")),
    ),
    max_size=25,
)


def apply(conn: Connection, op: Op) -> None:
    if op.kind == "upsert":
        # A new id inserts; a known one goes through ON CONFLICT DO UPDATE (update triggers).
        assert op.values is not None
        values = {"id": op.attempt_id, **op.values}
        make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = make(PaymentAttempt).values(values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=op.values))
    elif op.kind == "update" and op.values:
        conn.execute(
            update(PaymentAttempt).where(PaymentAttempt.id == op.attempt_id).values(op.values)
        )
    elif op.kind == "update_all" and op.values:
        conn.execute(update(PaymentAttempt).values(op.values))
    elif op.kind == "delete":
        conn.execute(delete(PaymentAttempt).where(PaymentAttempt.id == op.attempt_id))
    elif op.kind == "delete_failed":
        conn.execute(delete(PaymentAttempt).where(PaymentAttempt.outcome == "failed"))


@EXAMPLES
@given(ops=operations)
def test_the_rollup_is_the_group_by_of_attempts_after_any_writes(
    engine: Engine, ops: list[Op]
) -> None:
    with engine.connect() as conn:  # one transaction per example, rolled back
        assert rollup.actual(conn) == {}
        for op in ops:
            apply(conn, op)
            assert rollup.actual(conn) == rollup.expected(conn), op
        conn.rollback()


def test_the_webhook_path_keeps_the_rollup(engine: Engine) -> None:
    now = int(datetime.now(UTC).timestamp())
    for obj in (
        so.charge(succeeded=True, amount=2500, currency="usd", created=now - 7200),
        so.charge(succeeded=False, amount=900, currency="eur", created=now - 60),
        so.charge(succeeded=True, amount=500, currency="usd", created=now - 7200),
    ):
        kind = "charge.succeeded" if obj["paid"] else "charge.failed"
        evt = so.event(kind, obj)
        assert deliver(engine, evt).status == 200
        assert deliver(engine, evt).status == 200  # a duplicate changes nothing
    with engine.connect() as conn:
        got = rollup.actual(conn)
        assert got == rollup.expected(conn)
    assert sorted(got.values()) == [(1, 0, 1, 0), (2, 2, 0, 3000)]


def test_a_failed_write_leaves_the_rollup_as_it_was(engine: Engine) -> None:
    row = {"id": "ch_x", "created": BASE, "currency": "usd", "outcome": "succeeded", "amount": 1}
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.execute(insert(PaymentAttempt), [row])
        raise RuntimeError("the handler failed")
    with engine.connect() as conn:
        assert rollup.actual(conn) == {}


# --- The metrics that read it ------------------------------------------------------------------

DAYS = 9


@pytest.fixture
def attempts(engine: Engine) -> Iterator[tuple[Engine, pd.DataFrame]]:
    """About 3,000 attempts over nine days, some on the hour, some with no currency, some
    neither succeeded nor failed; returned as they are stored."""
    rng = random.Random(7)
    rows = []
    for n in range(3000):
        at = BASE + timedelta(microseconds=rng.randrange(DAYS * 86_400 * 1_000_000))
        if n % 10 == 0:
            at = at.replace(minute=0, second=0, microsecond=0)
        rows.append(
            {
                "id": f"ch_{n}",
                "created": at,
                "currency": rng.choice(["usd", "usd", "eur", "jpy", None]),
                "outcome": rng.choice(["succeeded", "failed", "failed", "processing"]),
                "amount": rng.choice([0, 900, 2500, 10_000]),
                "card_fingerprint": f"fp{rng.randrange(500)}",
            }
        )
    with session_scope(engine) as session:
        session.execute(insert(PaymentAttempt), rows)
    frame = pd.DataFrame(rows)
    frame["created"] = pd.to_datetime(frame["created"], utc=True)
    yield engine, frame


def _buckets(created: pd.Series, grain: Grain) -> pd.Series:
    if grain == "hour":
        buckets: pd.Series = created.dt.floor("h")
        return buckets
    buckets = created.dt.floor("D")
    return buckets if grain == "day" else buckets - pd.to_timedelta(buckets.dt.day_of_week, "D")


def _scan_rates(frame: pd.DataFrame, grain: Grain) -> list[tuple[Any, ...]]:
    """payment_rates without deduplication, from every attempt of the period."""
    if frame.empty:
        return []
    grouped = frame.assign(
        bucket=_buckets(frame["created"], grain),
        ok=frame["outcome"] == "succeeded",
        ko=frame["outcome"] == "failed",
    ).groupby("bucket")
    sums = grouped.agg(attempts=("id", "size"), succeeded=("ok", "sum"), failed=("ko", "sum"))
    return [(b, int(a), int(s), int(f)) for b, a, s, f in sums.itertuples()]


def _scan_volume(frame: pd.DataFrame, grain: Grain) -> list[tuple[Any, ...]]:
    ok = frame[frame["outcome"] == "succeeded"]
    if ok.empty:
        return []
    sums = (
        ok.assign(bucket=_buckets(ok["created"], grain), currency=ok["currency"].fillna("unknown"))
        .groupby(["bucket", "currency"])
        .agg(amount=("amount", "sum"), payments=("id", "size"))
    )
    return [(b, c, int(a), int(p)) for (b, c), a, p in sums.itertuples()]


# Period bounds: anywhere, on the hour, a microsecond either side of it; periods from a
# fraction of one hour (no whole hour inside) to the whole data set.
bounds = st.one_of(
    st.integers(-3600, DAYS * 86_400 + 3600).map(lambda s: BASE + timedelta(seconds=s)),
    st.builds(
        lambda hours, micros: BASE + timedelta(hours=hours, microseconds=micros),
        st.integers(-1, DAYS * 24 + 1),
        st.sampled_from([-1, 0, 1]),
    ),
)
periods = st.tuples(bounds, bounds).filter(lambda p: p[0] != p[1]).map(lambda p: Period(*sorted(p)))


@EXAMPLES
@given(period=periods)
def test_metrics_read_from_the_rollup_equal_a_scan_of_every_attempt(
    attempts: tuple[Engine, pd.DataFrame], period: Period
) -> None:
    engine, frame = attempts
    inside = frame[(frame["created"] >= period.start) & (frame["created"] < period.end)]
    ok = inside[inside["outcome"] == "succeeded"]
    with Session(engine) as session:
        got = payments.overview(session, period)
        assert (got.attempts, got.succeeded, got.failed) == (
            len(inside),
            len(ok),
            int((inside["outcome"] == "failed").sum()),
        )
        volume = ok.groupby(ok["currency"].fillna("unknown"))["amount"].sum()
        assert got.volume_by_currency == {c: int(a) for c, a in sorted(volume.items())}
        for grain in GRAINS:
            rates = payments.payment_rates(session, period, grain)
            assert [tuple(r) for r in rates.iloc[:, :4].itertuples(index=False)] == _scan_rates(
                inside, grain
            ), grain
            amounts = payments.volume_by_currency(session, period, grain)
            assert [tuple(r) for r in amounts.itertuples(index=False)] == _scan_volume(
                inside, grain
            ), grain


def test_an_hour_split_by_the_period_counts_only_its_part(
    attempts: tuple[Engine, pd.DataFrame],
) -> None:
    """A period inside one hour, and one across a single hour boundary: no whole hour."""
    engine, frame = attempts
    for start, end in ((BASE + timedelta(minutes=10), BASE + timedelta(minutes=50)),
                       (BASE + timedelta(minutes=30), BASE + timedelta(minutes=90))):  # fmt: skip
        inside = frame[(frame["created"] >= start) & (frame["created"] < end)]
        with Session(engine) as session:
            got = payments.overview(session, Period(start, end))
        assert got.attempts == len(inside) > 0
