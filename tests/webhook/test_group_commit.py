"""Group commit (`core.webhook.receive.receive_many`), on SQLite and PostgreSQL: deliveries written
together are answered, stored and isolated exactly as if each had its own transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.models import Fulfillment, Order, StripeEvent, WebhookDelivery
from core.webhook.handlers import Context
from core.webhook.receive import Delivery, Outcome, receive, receive_many
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.webhook.test_webhook_path import count, snapshot

NOW = datetime.now(UTC).replace(microsecond=0)


class WarehouseDown(RuntimeError):
    pass


def _fulfiller(doomed: set[str]) -> Any:
    """Fails for the Checkout Sessions in `doomed`: one with a plain error, one with a failed
    flush (a second fulfillment row for the order breaks its UNIQUE key)."""

    def fulfil(session: Session, order: Order) -> None:
        if order.checkout_session_id not in doomed:
            return
        if order.customer_email and order.customer_email.startswith("flush"):
            session.add(Fulfillment(order_id=order.id, fulfilled_at=order.paid_at, source="x"))
            session.flush()
        raise WarehouseDown(f"no stock for {order.checkout_session_id}")

    return fulfil


def _events() -> tuple[list[dict[str, Any]], set[str]]:
    ok = so.checkout_session()
    crash = so.checkout_session()
    flush = so.checkout_session(email="flush@example.com")
    declined = so.payment_intent(succeeded=False, decline_code="do_not_honor")
    events = [
        so.event("checkout.session.completed", ok),
        so.event("checkout.session.completed", crash),
        so.event("checkout.session.completed", flush),
        so.event("payment_intent.payment_failed", declined),
    ]
    return events, {crash["id"], flush["id"]}


def _deliveries(events: list[dict[str, Any]]) -> list[Delivery]:
    signed = [so.signed(evt, SECRET, int(NOW.timestamp())) for evt in events]
    body, header = signed[0]
    return [
        Delivery(*signed[0], remote_addr="127.0.0.1"),
        Delivery(body + b" ", header),  # tampered
        Delivery(*signed[1]),
        Delivery(*signed[2]),
        Delivery(*signed[0]),  # the same event again, inside the same group
        Delivery(*signed[3]),
        Delivery(b"", None, too_large=True),
    ]


def _answers(outcomes: list[Outcome]) -> list[tuple[int, str, str | None]]:
    return [(o.status, o.result, o.reason) for o in outcomes]


def test_a_group_is_answered_and_stored_like_single_deliveries(
    engine: Engine, other_engine: Engine
) -> None:
    events, doomed = _events()
    ctx = Context(fulfiller=_fulfiller(doomed), clock=lambda: NOW)
    deliveries = _deliveries(events)

    grouped = receive_many(engine, deliveries, secrets=[SECRET], tolerance=300, ctx=ctx)
    single = [
        receive(
            other_engine,
            d.payload,
            d.header,
            secrets=[SECRET],
            tolerance=300,
            ctx=ctx,
            remote_addr=d.remote_addr,
            too_large=d.too_large,
        )
        for d in deliveries
    ]

    assert (
        _answers(grouped)
        == _answers(single)
        == [
            (200, "processed", None),
            (400, "rejected", "no_matching_signature"),
            (500, "error", "processing_failed"),
            (500, "error", "processing_failed"),
            (200, "duplicate", None),
            (200, "processed", None),
            (413, "rejected", "body_too_large"),
        ]
    )
    # Every table the path writes holds the same rows either way (ids included): the failed
    # events left nothing but their failed event row and delivery row.
    assert snapshot(engine) == snapshot(other_engine)
    assert count(engine, Order) == count(engine, Fulfillment) == 1
    with Session(engine) as session:
        failed = [
            error or ""
            for error in session.scalars(
                select(StripeEvent.last_error).where(StripeEvent.status == "failed")
            )
        ]
        assert len(failed) == 2
        assert any(error.startswith("WarehouseDown: no stock for cs_") for error in failed)
        assert any("fulfillments" in error for error in failed)  # the failed flush
        rows = session.execute(
            select(WebhookDelivery.http_status, WebhookDelivery.outcome).order_by(
                WebhookDelivery.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [(o.status, _stored(o)) for o in grouped]


def _stored(outcome: Outcome) -> str:
    return "failed" if outcome.result == "error" else outcome.result


def test_a_failed_event_in_a_group_is_applied_by_its_redelivery(engine: Engine) -> None:
    events, doomed = _events()
    deliveries = _deliveries(events)
    first = receive_many(
        engine,
        deliveries,
        secrets=[SECRET],
        tolerance=300,
        ctx=Context(fulfiller=_fulfiller(doomed), clock=lambda: NOW),
    )
    assert [o.status for o in first].count(500) == 2
    again = receive_many(
        engine, deliveries[2:4], secrets=[SECRET], tolerance=300, ctx=Context(clock=lambda: NOW)
    )
    assert _answers(again) == [(200, "processed", None)] * 2
    assert count(engine, Order) == count(engine, Fulfillment) == 3
    with Session(engine) as session:
        assert session.scalars(select(StripeEvent.deliveries).order_by(StripeEvent.id)).all() == [
            2
            if evt["id"] == events[0]["id"]
            else (2 if evt["data"]["object"]["id"] in doomed else 1)
            for evt in sorted(events, key=lambda e: e["id"])
        ]
