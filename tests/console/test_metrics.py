"""core.console against hand-computed expectations on a small hand-built data set, on SQLite
and PostgreSQL.

The data set (see `dataset`) spans the week P = [Mon 2026-03-02, Mon 2026-03-09) with rows
exactly on both edges and just before the start, so every query is checked for a start that is
inclusive and an end that is exclusive."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor
from core.console import orders, payments, period, timeline, webhooks
from core.console.period import Period
from core.db import session_scope
from core.models import (
    FulfillmentRequest,
    Order,
    OrderTransition,
    PaymentAttempt,
    RiskFlag,
    StripeEvent,
    WebhookDelivery,
    WebhookRejection,
)


def t(day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


P = Period(t(2, 0), t(9, 0))
EMPTY = Period(t(20), t(21))


def _order(
    order_id: int,
    email: str,
    amount: int,
    currency: str,
    status: str,
    created: datetime,
    customer: str,
    **facts: Any,
) -> dict[str, Any]:
    return {
        "id": order_id,
        "checkout_session_id": f"cs_test_{order_id}",
        "payment_intent_id": f"pi_test_{order_id}",
        "customer_id": customer,
        "customer_email": email,
        "amount_total": amount,
        "currency": currency,
        "status": status,
        "created_at": created,
        "updated_at": created,
        **facts,
    }


ORDERS = [
    _order(
        1,
        "Jenny.Rosen@Example.com",
        1000,
        "usd",
        "fulfilled",
        t(2),
        "cus_one",
        paid_at=t(2),
        fulfilled_at=t(2, 0, 0, 5),
    ),
    _order(
        2,
        "jenny.rosenberg@example.com",
        500,
        "usd",
        "paid",
        t(2, 10, 10),
        "cus_two",
        paid_at=t(2, 10, 50),
    ),
    _order(
        3,
        "bob@example.org",
        5000,
        "jpy",
        "refunded",
        t(4, 11),
        "cus_one",
        paid_at=t(4, 12),
        amount_refunded=5000,
        refunded_at=t(5),
    ),
    _order(
        4,
        "carol@example.net",
        2000,
        "eur",
        "disputed",
        t(3, 8),
        "cus_four",
        paid_at=t(3, 8),
        disputed_at=t(6),
    ),
    # Refunded exactly at the end of P: not in P.
    _order(
        5,
        "dave@example.com",
        800,
        "usd",
        "partially_refunded",
        t(1),
        "cus_five",
        paid_at=t(1),
        amount_refunded=100,
        refunded_at=t(9),
    ),
]


def _attempt(
    attempt_id: str,
    created: datetime,
    outcome: str,
    fingerprint: str | None,
    currency: str,
    amount: int,
    order_id: int | None,
    last4: str = "4242",
    decline: str | None = None,
    failure: str | None = None,
) -> dict[str, Any]:
    return {
        "id": attempt_id,
        "payment_intent_id": f"pi_test_{order_id}" if order_id else None,
        "order_id": order_id,
        "card_fingerprint": fingerprint,
        "card_last4": last4,
        "card_brand": "visa",
        "amount": amount,
        "currency": currency,
        "outcome": outcome,
        "decline_code": decline,
        "failure_code": failure,
        "created": created,
        "event_id": None,
    }


ATTEMPTS = [
    _attempt("ch_a1", t(2), "succeeded", "fpA", "usd", 1000, 1),  # exactly at the start
    _attempt(
        "ch_a2",
        t(2, 10, 15),
        "failed",
        "fpB",
        "usd",
        500,
        2,
        "0341",
        "insufficient_funds",
        "card_declined",
    ),
    _attempt(
        "ch_a3",
        t(2, 10, 45),
        "failed",
        "fpB",
        "usd",
        500,
        2,
        "0341",
        "insufficient_funds",
        "card_declined",
    ),
    _attempt("ch_a4", t(2, 10, 50), "succeeded", "fpB", "usd", 500, 2, "0341"),
    _attempt("ch_a5", t(3, 9), "failed", "fpC", "eur", 2000, 4, "0003", None, "processing_error"),
    _attempt("ch_a6", t(3, 9, 30), "failed", None, "eur", 2000, 4, "0003"),
    _attempt("ch_a7", t(4, 12), "succeeded", "fpD", "jpy", 5000, 3),
    _attempt("ch_a8", t(9), "succeeded", "fpE", "usd", 9999, None),  # exactly at the end
    _attempt(
        "ch_a9",
        t(1, 23, 59, 59),
        "failed",
        "fpA",
        "usd",
        700,
        None,
        "4242",
        "do_not_honor",
        "card_declined",
    ),  # a Sunday, just before P
]


def _event(
    event_id: str,
    event_type: str,
    object_id: str,
    created: datetime,
    received_after: float,
    processed_after: float | None,
    status: str,
    deliveries: int,
    error: str | None = None,
) -> dict[str, Any]:
    received = created + timedelta(seconds=received_after)
    return {
        "id": event_id,
        "type": event_type,
        "created": created,
        "livemode": False,
        "object_id": object_id,
        "status": status,
        "deliveries": deliveries,
        "first_received_at": received,
        "processed_at": None
        if processed_after is None
        else created + timedelta(seconds=processed_after),
        "last_error": error,
        "payload": {"id": event_id},
    }


EVENTS = [
    _event("evt_1", "checkout.session.completed", "cs_test_1", t(2), 2, 3, "processed", 1),
    _event("evt_2", "charge.failed", "ch_a2", t(2, 10, 15), 10, 10, "processed", 3),
    _event("evt_3", "charge.succeeded", "ch_a4", t(2, 10, 50), 4, None, "failed", 2, "boom"),
    _event("evt_4", "charge.succeeded", "ch_zz", t(8, 23, 59), 60, None, "failed", 1, "late"),
    _event("evt_5", "charge.dispute.created", "dp_1", t(6), 1, 1, "processed", 1),
    # Paying events that keep failing: cs_test_9 has no order (the failure rolled it back) and
    # counts as paid but not fulfilled; order 2 is already counted through its own status.
    _event(
        "evt_6",
        "checkout.session.completed",
        "cs_test_9",
        t(10, 1),
        1,
        None,
        "failed",
        4,
        "FulfilmentUnavailable: 503",
    ),
    _event(
        "evt_7",
        "checkout.session.completed",
        "cs_test_2",
        t(10, 2),
        1,
        None,
        "failed",
        1,
        "FulfilmentUnavailable: 503",
    ),
]


def _delivery(
    at: datetime,
    outcome: str,
    event_id: str | None = None,
    event_type: str | None = None,
    reason: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    status = {"processed": 200, "duplicate": 200, "ignored": 200, "rejected": 400, "failed": 500}[
        outcome
    ]
    return {
        "received_at": at,
        "event_id": event_id,
        "event_type": event_type,
        "verified": outcome != "rejected",
        "rejection_reason": reason,
        "http_status": status,
        "outcome": outcome,
        "error": error,
    }


DELIVERIES = [
    _delivery(t(2, 0, 0, 2), "processed", "evt_1", "checkout.session.completed"),
    _delivery(t(2, 10, 15, 10), "failed", "evt_2", "charge.failed", error="boom1"),
    _delivery(t(2, 10, 16), "failed", "evt_2", "charge.failed", error="boom2"),
    _delivery(t(2, 10, 20), "processed", "evt_2", "charge.failed"),
    _delivery(t(2, 10, 50, 4), "failed", "evt_3", "charge.succeeded", error="boom"),
    _delivery(t(3, 1), "failed", "evt_3", "charge.succeeded", error="boom"),
    _delivery(t(3, 12), "rejected", reason="no_matching_signature"),
    _delivery(t(3, 12, 1), "rejected", reason="no_matching_signature"),
    _delivery(t(4), "rejected", reason="timestamp_too_old"),
    _delivery(t(9), "rejected", reason="no_matching_signature"),  # at the end: not in P
    _delivery(t(1, 23, 59, 59), "failed", "evt_9", "charge.failed", error="x"),  # before P
    _delivery(t(6, 0, 0, 1), "processed", "evt_5", "charge.dispute.created"),
    _delivery(t(6, 5), "duplicate", "evt_1", "checkout.session.completed"),
]


def _rejections(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-minute counters the receiver keeps for the rejected requests above (their
    delivery rows are only a sample)."""
    counts: dict[tuple[datetime, str], int] = {}
    for d in deliveries:
        if d["outcome"] == "rejected":
            key = (d["received_at"].replace(second=0, microsecond=0), d["rejection_reason"])
            counts[key] = counts.get(key, 0) + 1
    return [
        {"minute": minute, "reason": reason, "remote_addr": "", "deliveries": n}
        for (minute, reason), n in counts.items()
    ]


REJECTIONS = _rejections(DELIVERIES)


def _flag(status: str) -> dict[str, Any]:
    return {
        "entity_kind": "card",
        "entity_value": "fpB",
        "window_start": t(2, 10),
        "window_end": t(2, 11),
        "failures": 5,
        "status": status,
    }


@pytest.fixture
def data(engine: Engine) -> Iterator[Engine]:
    with session_scope(engine) as session:
        session.execute(insert(Order), ORDERS)
        session.execute(insert(PaymentAttempt), ATTEMPTS)
        session.execute(insert(StripeEvent), EVENTS)
        session.execute(insert(WebhookDelivery), DELIVERIES)
        session.execute(insert(WebhookRejection), REJECTIONS)
        session.execute(insert(RiskFlag), [_flag("open"), _flag("open"), _flag("dismissed")])
        session.execute(
            insert(OrderTransition),
            [
                {
                    "order_id": 2,
                    "at": t(2, 10, 50),
                    "from_status": "pending",
                    "to_status": "paid",
                    "event_id": "evt_3",
                },
                {
                    "order_id": 4,
                    "at": t(3, 8),
                    "from_status": "pending",
                    "to_status": "paid",
                    "event_id": None,
                },
                {
                    "order_id": 4,
                    "at": t(6),
                    "from_status": "paid",
                    "to_status": "disputed",
                    "event_id": "evt_5",
                },
            ],
        )
        session.add(
            FulfillmentRequest(
                order_id=2, requested_by="sam", requested_at=t(7), reason="customer called"
            )
        )
        audit.record(
            session,
            Actor("alex", "admin"),
            "fulfillment.request",
            "order:2",
            {"note": "x"},
            at=t(7, 0, 1),
        )
        audit.record(session, Actor("alex", "admin"), "login", None, at=t(7, 0, 2))
    yield engine


def read(engine: Engine) -> Session:
    return Session(engine)


# --- Period ------------------------------------------------------------------------------------


def test_period_last_and_previous() -> None:
    now = t(9, 12)
    period = Period.last(7, now)
    assert (period.start, period.end) == (t(2, 12), t(9, 12))
    assert period.previous() == Period(t(2, 12) - timedelta(days=7), t(2, 12))
    assert Period.last(1).end.tzinfo is not None


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (t(2), t(2)),  # empty
        (t(3), t(2)),  # backwards
        (datetime(2026, 3, 2), datetime(2026, 3, 3)),  # naive
    ],
)
def test_period_refuses_bad_bounds(start: datetime, end: datetime) -> None:
    with pytest.raises(ValueError):
        Period(start, end)


# --- Overview ----------------------------------------------------------------------------------


def test_overview(data: Engine) -> None:
    with read(data) as session:
        got = payments.overview(session, P)
    assert got.attempts == 7  # a1 at the start counts, a8 at the end and a9 before do not
    assert (got.succeeded, got.failed) == (3, 4)
    assert got.success_rate == pytest.approx(3 / 7)
    assert got.decline_rate == pytest.approx(4 / 7)
    assert got.volume_by_currency == {"jpy": 5000, "usd": 1500}
    assert got.refunded_orders == 1
    assert got.refunded_amount_by_currency == {"jpy": 5000}
    assert got.disputed_orders == 1
    assert got.webhook_failures == 7
    assert got.paid_not_fulfilled == 2  # order 2, and the session of evt_6
    assert got.open_risk_flags == 2


def test_overview_previous_period(data: Engine) -> None:
    with read(data) as session:
        got = payments.overview(session, P.previous())
    assert (got.attempts, got.succeeded, got.failed) == (1, 0, 1)
    assert (got.success_rate, got.decline_rate) == (0.0, 1.0)
    assert got.volume_by_currency == {}
    assert got.webhook_failures == 1


def test_overview_of_an_empty_period_has_no_rates(data: Engine) -> None:
    with read(data) as session:
        got = payments.overview(session, EMPTY)
    assert (got.attempts, got.success_rate, got.decline_rate) == (0, None, None)
    assert got.volume_by_currency == {} and got.refunded_amount_by_currency == {}


# --- Payments ----------------------------------------------------------------------------------


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in frame[columns].itertuples(index=False)]


def ts(value: datetime) -> pd.Timestamp:
    return pd.Timestamp(value)


@pytest.mark.parametrize(
    ("grain", "dedupe", "expected"),
    [
        (
            "hour",
            False,
            [(t(2), 1, 1, 0), (t(2, 10), 3, 1, 2), (t(3, 9), 2, 0, 2), (t(4, 12), 1, 1, 0)],
        ),
        # fpB failed twice then succeeded in hour 10: one attempt, succeeded.
        (
            "hour",
            True,
            [(t(2), 1, 1, 0), (t(2, 10), 1, 1, 0), (t(3, 9), 2, 0, 2), (t(4, 12), 1, 1, 0)],
        ),
        ("day", False, [(t(2), 4, 2, 2), (t(3), 2, 0, 2), (t(4), 1, 1, 0)]),
        ("day", True, [(t(2), 2, 2, 0), (t(3), 2, 0, 2), (t(4), 1, 1, 0)]),
        ("week", False, [(t(2), 7, 3, 4)]),
        # fpA, fpB, fpD succeeded; fpC failed; a6 has no fingerprint and counts alone.
        ("week", True, [(t(2), 5, 3, 2)]),
    ],
)
def test_payment_rates(
    data: Engine, grain: period.Grain, dedupe: bool, expected: list[tuple[Any, ...]]
) -> None:
    with read(data) as session:
        frame = payments.payment_rates(session, P, grain, dedupe_cards=dedupe)
    assert list(frame.columns) == list(payments.RATE_COLUMNS)
    assert _rows(frame, ["bucket", "attempts", "succeeded", "failed"]) == [
        (ts(b), a, s, f) for b, a, s, f in expected
    ]
    assert list(frame["success_rate"]) == pytest.approx([s / a for _, a, s, _ in expected])
    assert list(frame["decline_rate"]) == pytest.approx([f / a for _, a, _, f in expected])


def test_weeks_start_on_monday(data: Engine) -> None:
    # a9 is on Sunday 2026-03-01: its week starts Monday 2026-02-23.
    with read(data) as session:
        frame = payments.payment_rates(session, Period(t(23, month=2), t(9)), "week")
    assert _rows(frame, ["bucket", "attempts"]) == [(ts(t(23, month=2)), 1), (ts(t(2)), 7)]


def test_payment_rates_of_an_empty_period(data: Engine) -> None:
    with read(data) as session:
        frame = payments.payment_rates(session, EMPTY, "day", dedupe_cards=True)
    assert frame.empty and list(frame.columns) == list(payments.RATE_COLUMNS)


def test_unknown_grain_is_refused(data: Engine) -> None:
    with read(data) as session, pytest.raises(ValueError, match="grain"):
        payments.payment_rates(session, P, "month")  # type: ignore[arg-type]


def test_decline_reasons(data: Engine) -> None:
    with read(data) as session:
        frame = payments.decline_reasons(session, P)
        empty = payments.decline_reasons(session, EMPTY)
    assert _rows(frame, ["decline_code", "failures"]) == [
        ("insufficient_funds", 2),
        ("processing_error", 1),  # no decline code: the failure code
        ("unknown", 1),  # neither
    ]
    assert list(frame["share"]) == pytest.approx([0.5, 0.25, 0.25])
    assert empty.empty and list(empty.columns) == ["decline_code", "failures", "share"]


def test_volume_by_currency(data: Engine) -> None:
    with read(data) as session:
        frame = payments.volume_by_currency(session, P, "day")
    assert _rows(frame, ["bucket", "currency", "amount", "payments"]) == [
        (ts(t(2)), "usd", 1500, 2),
        (ts(t(4)), "jpy", 5000, 1),
    ]


# --- Orders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("jenny.rosen@example.com", [1]),  # exact, whatever the stored case
        ("  JENNY.ROSEN@EXAMPLE.COM ", [1]),
        ("jenny.rosen", [2, 1]),  # prefix, newest first
        ("bob@", [3]),
        ("nobody@example.com", []),
        ("2", [2]),  # order id
        ("cs_test_3", [3]),
        ("pi_test_2", [2]),
        ("cus_one", [3, 1]),
        ("ch_a5", [4]),
        ("0341", [2]),  # card last4
        ("4242", [3, 1]),  # a9 has last4 4242 too, but no order
        ("0003", [3, 4]),  # order id 3 and the orders with last4 0003
        ("%", []),  # wildcards are text
        ("", []),
    ],
)
def test_search_orders(data: Engine, query: str, expected: list[int]) -> None:
    with read(data) as session:
        frame = orders.search_orders(session, query)
        count = orders.count_orders(session, query)
    assert list(frame.columns) == list(orders.SEARCH_COLUMNS)
    assert list(frame["id"]) == expected
    assert count == len(expected)


def test_search_orders_pages(data: Engine) -> None:
    with read(data) as session:
        first = orders.search_orders(session, "jenny", limit=1)
        second = orders.search_orders(session, "jenny", limit=1, offset=1)
        row = orders.search_orders(session, "1").iloc[0]
    assert (list(first["id"]), list(second["id"])) == ([2], [1])
    assert row["customer_email"] == "Jenny.Rosen@Example.com"
    assert row["amount_total"] == 1000 and row["currency"] == "usd"
    assert row["created_at"] == ts(t(2)) and row["fulfilled_at"] == ts(t(2, 0, 0, 5))


def test_get_order(data: Engine) -> None:
    with read(data) as session:
        order = orders.get_order(session, 3)
        missing = orders.get_order(session, 999)
    assert order is not None and missing is None
    assert (order.status, order.amount_refunded, order.refunded_at) == ("refunded", 5000, t(5))


def test_order_timeline(data: Engine) -> None:
    """The timeline's shape on hand-built rows: one entry per attempt, with its event and every
    delivery of it folded under it (finding 8: no separate event and delivery entries)."""
    with read(data) as session:
        entries = timeline.order_timeline(session, 2)
    kinds = [(e.at, e.kind) for e in entries]
    assert kinds == [
        (t(2, 10, 10), "created"),
        (t(2, 10, 15), "payment"),
        (t(2, 10, 45), "payment"),
        (t(2, 10, 50), "payment"),
        (t(2, 10, 50), "status"),
        (t(7), "request"),
        (t(7, 0, 1), "action"),
        (t(10, 2), "event"),  # about its Checkout Session, explained by no entry
    ]
    failed = entries[1]
    assert failed.title == (
        "Payment of USD 5.00 declined: The card has insufficient funds (insufficient_funds)"
    )
    assert failed.facts["Card"].endswith("···· 0341")
    (event,) = failed.events
    assert event.event_id == "evt_2"
    assert [(d.outcome, d.error) for d in event.deliveries] == [
        ("failed", "boom1"),
        ("failed", "boom2"),
        ("processed", None),
    ]
    assert entries[6].title == "alex (admin) asked for a manual fulfillment"
    assert [e.at for e in entries] == sorted(e.at for e in entries)


def test_order_timeline_finds_events_named_by_transitions(data: Engine) -> None:
    with read(data) as session:
        entries = timeline.order_timeline(session, 4)
        none = timeline.order_timeline(session, 999)
    dispute = next(e for e in entries if e.kind == "dispute")
    assert [ev.event_id for ev in dispute.events] == ["evt_5"]  # about dp_1, named by its row
    assert [e.title for e in entries if e.kind == "status"] == ["Paid EUR 20.00"]
    assert [e.title for e in entries if e.kind == "payment"] == [
        "Payment of EUR 20.00 declined: An error occurred while processing the card "
        "(processing_error)",
        "Payment of EUR 20.00 declined: no reason given",
    ]
    assert none == []


# --- Webhooks ----------------------------------------------------------------------------------


def test_deliveries_by_day(data: Engine) -> None:
    with read(data) as session:
        frame = webhooks.deliveries_by_day(session, P)
    assert _rows(frame, ["day", "outcome", "deliveries"]) == [
        (ts(t(2)), "failed", 3),
        (ts(t(2)), "processed", 2),
        (ts(t(3)), "failed", 1),
        (ts(t(3)), "rejected", 2),
        (ts(t(4)), "rejected", 1),
        (ts(t(6)), "duplicate", 1),
        (ts(t(6)), "processed", 1),
    ]


def test_retry_stats(data: Engine) -> None:
    with read(data) as session:
        stats = webhooks.retry_stats(session, P)
        empty = webhooks.retry_stats(session, EMPTY)
    # evt_4 was first received at the end of P: not counted.
    assert (stats.events, stats.events_with_retries, stats.max_deliveries) == (4, 2, 3)
    assert _rows(stats.distribution, ["deliveries", "events"]) == [(1, 2), (2, 1), (3, 1)]
    assert stats.retry_share == 0.5
    assert (empty.events, empty.max_deliveries, empty.retry_share) == (0, 0, None)


def test_signature_failures(data: Engine) -> None:
    with read(data) as session:
        frame = webhooks.signature_failures(session, P)
    assert _rows(frame, ["reason", "deliveries"]) == [
        ("no_matching_signature", 2),
        ("timestamp_too_old", 1),
    ]


def test_processing_failures_page_newest_first(data: Engine) -> None:
    with read(data) as session:
        page = webhooks.processing_failures(session, P, limit=2, offset=1)
        everything = webhooks.processing_failures(session, P)
        count = webhooks.count_processing_failures(session, P)
    assert _rows(everything, ["event_id", "received_at", "error"]) == [
        ("evt_3", ts(t(3, 1)), "boom"),
        ("evt_3", ts(t(2, 10, 50, 4)), "boom"),
        ("evt_2", ts(t(2, 10, 16)), "boom2"),
        ("evt_2", ts(t(2, 10, 15, 10)), "boom1"),
    ]
    assert count == 4
    assert list(page["error"]) == ["boom", "boom2"]


def test_webhook_lag(data: Engine) -> None:
    with read(data) as session:
        frame = webhooks.webhook_lag(session, P)
        empty = webhooks.webhook_lag(session, EMPTY)
    got = frame.set_index("measure")
    # to first receipt: 1, 2, 4, 10 s -> nearest-rank p50 = 2, p95 = 10.
    # to processed (evt_3 never was): 1, 3, 10 s.
    assert list(got.index) == ["to_first_receipt", "to_processed"]
    assert list(got["events"]) == [4, 3]
    assert list(got["p50_seconds"]) == pytest.approx([2, 3])
    assert list(got["p95_seconds"]) == pytest.approx([10, 10])
    assert list(got["max_seconds"]) == pytest.approx([10, 10])
    assert list(empty["events"]) == [0, 0] and empty["p50_seconds"].isna().all()


def test_oldest_failing_events(data: Engine) -> None:
    with read(data) as session:
        frame = webhooks.oldest_failing_events(session)
        first = webhooks.oldest_failing_events(session, limit=1)
        count = webhooks.count_failing_events(session)
    assert _rows(frame, ["id", "deliveries", "last_error"]) == [
        ("evt_3", 2, "boom"),
        ("evt_4", 1, "late"),
        ("evt_6", 4, "FulfilmentUnavailable: 503"),
        ("evt_7", 1, "FulfilmentUnavailable: 503"),
    ]
    assert frame.iloc[0]["created"] == ts(t(2, 10, 50))
    assert list(first["id"]) == ["evt_3"] and count == 4
