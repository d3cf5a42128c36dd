"""The webhook path of DESIGN.md step 3, through `receive()`, on SQLite and PostgreSQL:
exactly once, duplicates harmless, handler errors rolled back and retried, ignored events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from core.models import (
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
)
from core.webhook.handlers import Context
from core.webhook.receive import Outcome, receive
from core.webhook.signature import sign
from tests.conftest import SECRET
from tests.support import stripe_objects as so

TABLES = (StripeEvent, Order, OrderTransition, Fulfillment, PaymentAttempt)


def deliver(engine: Engine, evt: dict[str, Any], ctx: Context | None = None) -> Outcome:
    body, header = so.signed(evt, SECRET)
    return receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx or Context())


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the path writes (but the delivery log), in a stable order."""
    with engine.connect() as conn:
        return {
            model.__tablename__: [
                tuple(row)
                for row in conn.execute(
                    select(*[c for c in model.__table__.columns if c.name != "payload"]).order_by(
                        *model.__mapper__.primary_key
                    )
                )
            ]
            for model in TABLES
        }


def count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def event_row(engine: Engine, event_id: str) -> StripeEvent:
    with Session(engine) as session:
        return session.execute(select(StripeEvent).where(StripeEvent.id == event_id)).scalar_one()


def last_delivery(engine: Engine) -> WebhookDelivery:
    with Session(engine) as session:
        return session.scalars(
            select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(1)
        ).one()


def test_duplicate_delivery_changes_nothing(engine: Engine) -> None:
    evt = so.event("checkout.session.completed", so.checkout_session())
    first = deliver(engine, evt)
    before = snapshot(engine)
    again = deliver(engine, evt)
    assert (first.status, first.result) == (200, "processed")
    assert (again.status, again.result, again.body()) == (
        200,
        "duplicate",
        {"result": "duplicate", "event_id": evt["id"]},
    )
    after = snapshot(engine)
    # Only the delivery counter of the event moves.
    assert event_row(engine, evt["id"]).deliveries == 2
    deliveries_col = [c.name for c in StripeEvent.__table__.columns if c.name != "payload"].index(
        "deliveries"
    )
    for table in before:
        if table == "stripe_events":
            strip = [r[:deliveries_col] + r[deliveries_col + 1 :] for r in before[table]]
            assert strip == [r[:deliveries_col] + r[deliveries_col + 1 :] for r in after[table]]
        else:
            assert before[table] == after[table], table
    assert count(engine, WebhookDelivery) == 2
    assert last_delivery(engine).outcome == "duplicate"


def test_completed_then_async_succeeded_fulfils_once(engine: Engine) -> None:
    session_obj = so.checkout_session(payment_status="paid")
    completed = so.event("checkout.session.completed", session_obj)
    succeeded = so.event("checkout.session.async_payment_succeeded", dict(session_obj))
    assert deliver(engine, completed).result == "processed"
    assert deliver(engine, succeeded).result == "processed"
    assert count(engine, Order) == 1
    assert count(engine, Fulfillment) == 1
    with Session(engine) as session:
        order = session.scalars(select(Order)).one()
        fulfillment = session.scalars(select(Fulfillment)).one()
    assert order.status == "fulfilled"
    assert (fulfillment.order_id, fulfillment.source, fulfillment.event_id) == (
        order.id,
        "webhook",
        completed["id"],
    )


def test_async_payment_fulfils_when_it_succeeds_later(engine: Engine) -> None:
    session_obj = so.checkout_session(payment_status="unpaid")
    assert deliver(engine, so.event("checkout.session.completed", session_obj)).result == (
        "processed"
    )
    with Session(engine) as session:
        assert session.scalars(select(Order.status)).one() == "pending"
    assert count(engine, Fulfillment) == 0
    paid = dict(session_obj, payment_status="paid")
    deliver(engine, so.event("checkout.session.async_payment_succeeded", paid))
    with Session(engine) as session:
        assert session.scalars(select(Order.status)).one() == "fulfilled"
    assert count(engine, Fulfillment) == 1


UNKNOWN_TYPES = ("customer.created", "invoice.paid", "payout.paid", "price.updated")


def test_unknown_event_types_are_recorded_as_ignored(engine: Engine) -> None:
    for number, event_type in enumerate(UNKNOWN_TYPES, start=1):
        customer = so.example("customer")
        evt = so.event(event_type, customer)
        outcome = deliver(engine, evt)
        assert (outcome.status, outcome.result) == (200, "ignored")
        row = event_row(engine, evt["id"])
        assert (row.status, row.type, row.object_id) == ("ignored", event_type, customer["id"])
        assert row.payload == evt
        assert last_delivery(engine).outcome == "ignored"
        assert count(engine, StripeEvent) == number
    assert count(engine, Order) == count(engine, PaymentAttempt) == 0


LIVEMODE_CASES = (
    # configured key's mode, event's livemode, expected result
    (False, True, "ignored"),  # a live event sent to a test deployment
    (True, False, "ignored"),  # a test event sent to a live deployment
    (False, False, "processed"),
    (True, True, "processed"),
    (None, True, "processed"),  # no key configured: nothing to contradict
)


def test_livemode_contradicting_the_key_is_recorded_and_ignored(engine: Engine) -> None:
    fulfilled = 0
    for expected_livemode, event_livemode, result in LIVEMODE_CASES:
        evt = so.event("checkout.session.completed", so.checkout_session(), livemode=event_livemode)
        outcome = deliver(engine, evt, Context(expected_livemode=expected_livemode))
        assert (outcome.status, outcome.result) == (200, result)
        row = event_row(engine, evt["id"])
        assert (row.status, row.livemode) == (result, event_livemode)
        if result == "ignored":
            assert row.last_error is not None and "livemode" in row.last_error
        else:
            assert row.last_error is None
            fulfilled += 1
        assert count(engine, Order) == count(engine, Fulfillment) == fulfilled


class FulfilmentDown(RuntimeError):
    pass


def failing_fulfiller(session: Session, order: Order) -> None:
    raise FulfilmentDown(f"warehouse API unavailable for order {order.checkout_session_id}")


def test_handler_error_rolls_back_and_the_redelivery_succeeds(engine: Engine) -> None:
    session_obj = so.checkout_session()
    evt = so.event("checkout.session.completed", session_obj)

    failed = deliver(engine, evt, Context(fulfiller=failing_fulfiller))
    assert (failed.status, failed.result, failed.reason) == (500, "error", "processing_failed")
    assert count(engine, Order) == count(engine, Fulfillment) == count(engine, OrderTransition) == 0
    row = event_row(engine, evt["id"])
    assert (row.status, row.deliveries) == ("failed", 1)
    assert row.last_error == (
        f"FulfilmentDown: warehouse API unavailable for order {session_obj['id']}"
    )
    delivery = last_delivery(engine)
    assert (delivery.http_status, delivery.outcome, delivery.verified) == (500, "failed", True)
    assert delivery.event_id == evt["id"]
    assert delivery.error == row.last_error
    assert "Traceback" not in (delivery.error or "")

    # Still failing: still rolled back, the counter and error kept.
    assert deliver(engine, evt, Context(fulfiller=failing_fulfiller)).status == 500
    assert event_row(engine, evt["id"]).deliveries == 2
    assert count(engine, Order) == 0

    # Stripe retries once the warehouse is back: applied exactly once.
    retried = deliver(engine, evt)
    assert (retried.status, retried.result) == (200, "processed")
    row = event_row(engine, evt["id"])
    assert (row.status, row.deliveries, row.last_error) == ("processed", 3, None)
    assert count(engine, Order) == count(engine, Fulfillment) == 1
    assert deliver(engine, evt).result == "duplicate"
    assert count(engine, Fulfillment) == 1
    with engine.connect() as conn:
        outcomes = conn.execute(
            select(WebhookDelivery.http_status, WebhookDelivery.outcome).order_by(
                WebhookDelivery.id
            )
        ).all()
    assert [tuple(o) for o in outcomes] == [
        (500, "failed"),
        (500, "failed"),
        (200, "processed"),
        (200, "duplicate"),
    ]


def test_an_object_without_its_id_is_unprocessable_not_a_500(engine: Engine) -> None:
    """Issue 11, finding 4: a verified event its handler can never apply (no session id) is
    stored as unprocessable with its reason and answered 200, not a 500 that Stripe retries."""
    evt = so.event("checkout.session.completed", so.checkout_session())
    del evt["data"]["object"]["id"]
    outcome = deliver(engine, evt)
    assert (outcome.status, outcome.result) == (200, "unprocessable")
    row = event_row(engine, evt["id"])
    assert row.status == "unprocessable" and row.object_id is None
    assert row.last_error == "data.object.id: missing"


def test_event_row_keeps_what_stripe_sent(engine: Engine) -> None:
    created = int(datetime(2026, 11, 20, 9, 30, tzinfo=UTC).timestamp())
    session_obj = so.checkout_session()
    evt = so.event("checkout.session.completed", session_obj, created=created)
    deliver(engine, evt)
    row = event_row(engine, evt["id"])
    assert row.created == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert (row.type, row.object_id, row.api_version, row.source) == (
        "checkout.session.completed",
        session_obj["id"],
        "2026-08-27.preview",
        "webhook",
    )
    assert row.payload == evt
    assert row.processed_at is not None and row.first_received_at is not None


def test_event_row_stores_the_signed_body_byte_for_byte(engine: Engine) -> None:
    evt = so.event("payment_intent.succeeded", so.payment_intent())
    body, header = so.signed(evt, SECRET)
    body = body.replace(b'"object":', b'"object" :  ', 1)  # whitespace Stripe could send
    header = sign(body, SECRET)
    outcome = receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=Context())
    assert outcome.result == "processed"
    as_text = "payload" if engine.dialect.name == "sqlite" else "payload::text"
    with engine.connect() as conn:
        stored = conn.execute(
            text(f"SELECT {as_text} FROM stripe_events WHERE id = :id"), {"id": evt["id"]}
        ).scalar_one()
    assert stored == body.decode()
    assert event_row(engine, evt["id"]).payload == evt
