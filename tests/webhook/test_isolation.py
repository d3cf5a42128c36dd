"""Issue 11 (findings 3 and 4): one bad event never hurts another, and a signed event that can
never be applied is stored as unprocessable (answered 200) instead of failing forever.

Hostile events are real Stripe example objects (tests/fixtures) with one field a handler reads
made impossible: an id with a NUL or a lone surrogate, a 300-character id, an amount beyond 64
bits, a timestamp past the year 9999, a missing or non-string id, `{}` as the object."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.models import Fulfillment, Order, StripeEvent, WebhookDelivery
from core.webhook.handlers import Context
from core.webhook.receive import Delivery, receive_many
from core.webhook.validate import clean
from tests.conftest import SECRET
from tests.support import stripe_objects as so

NOW = datetime.now(UTC).replace(microsecond=0)
POISON = "cs_test_poisoned_fulfilment"


def _session_event(**changes: Any) -> dict[str, Any]:
    obj = so.checkout_session()
    obj.update(changes)
    return so.event("checkout.session.completed", obj)


def _charge_event(**changes: Any) -> dict[str, Any]:
    obj = so.charge()
    obj.update(changes)
    return so.event("charge.succeeded", obj)


# (what is wrong, the event): each can never be applied as sent.
HOSTILE: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("session id with a NUL", lambda: _session_event(id="cs_test_\x00nul")),
    ("session id with a lone surrogate", lambda: _session_event(id="cs_test_\ud800x")),
    ("300-character session id", lambda: _session_event(id="cs_test_" + "a" * 300)),
    ("payment intent id with a NUL", lambda: _session_event(payment_intent="pi_\x00")),
    ("amount beyond 64 bits", lambda: _session_event(amount_total=2**70)),
    ("created past the year 9999", lambda: _session_event(created=10**12)),
    ("charge amount beyond 64 bits", lambda: _charge_event(amount=-(2**64))),
    ("object without its id", lambda: _charge_event(id=None)),
    ("non-string object id", lambda: _charge_event(id=12345)),
    ("{} as the object", lambda: so.event("charge.refunded", {})),
    ("event id with a NUL", lambda: so.event("charge.succeeded", so.charge(), event_id="evt_\x00")),
]


def _failing_fulfiller(session: Session, order: Order) -> None:
    """Fails with a message that quotes hostile text: recording this failure used to fail."""
    if order.checkout_session_id == POISON:
        raise RuntimeError("warehouse said \x00 and \ud800 for " + "x" * 600)


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_a_hostile_event_among_valid_ones_in_one_group(engine: Engine) -> None:
    """Finding 3 (SQLite, PostgreSQL NUL, PostgreSQL long id): every valid delivery of the group
    is answered 200 and applied; each hostile one is stored with its reason and has its
    delivery row; a failure while recording a failure (an error quoting a NUL and a lone
    surrogate) no longer fails the group either."""
    valid = [_session_event() for _ in range(30)]
    hostile = [make() for _, make in HOSTILE]
    poisoned = _session_event(id=POISON)
    events = []
    for index, evt in enumerate(valid):
        events.append(evt)
        if index < len(hostile):
            events.append(hostile[index])
    events.append(poisoned)
    deliveries = [
        Delivery(*so.signed(evt, SECRET, int(NOW.timestamp())), remote_addr="127.0.0.1")
        for evt in events
    ]
    ctx = Context(fulfiller=_failing_fulfiller, clock=lambda: NOW)

    outcomes = receive_many(engine, deliveries, secrets=[SECRET], tolerance=300, ctx=ctx)

    answers = {clean(evt["id"], 255): o for evt, o in zip(events, outcomes, strict=True)}
    for evt in valid:
        assert (answers[evt["id"]].status, answers[evt["id"]].result) == (200, "processed")
    assert _count(engine, Order, Order.status == "fulfilled") == len(valid)
    assert _count(engine, Fulfillment) == len(valid)
    with Session(engine) as session:
        for (what, _), evt in zip(HOSTILE, hostile, strict=True):
            key = clean(evt["id"], 255)
            assert (answers[key].status, answers[key].result) == (200, "unprocessable"), what
            row = session.get(StripeEvent, key)
            assert row is not None and row.status == "unprocessable", what
            assert row.last_error, what
            delivery = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.event_id == key)
            ).one()
            assert (delivery.outcome, delivery.http_status) == ("unprocessable", 200), what
        assert answers[poisoned["id"]].status == 500  # ours to fix: Stripe retries it
        failed = session.get(StripeEvent, poisoned["id"])
        assert failed is not None and failed.status == "failed"
        assert failed.last_error is not None and "\x00" not in failed.last_error
        assert len(failed.last_error) <= 500
    # Every delivery left its row.
    assert _count(engine, WebhookDelivery) == len(events)


def test_an_unprocessable_event_is_answered_the_same_on_every_retry(engine: Engine) -> None:
    """Finding 4: the redelivery of an impossible event is counted and answered 200 again,
    never a 500 that Stripe (and every reconcile run) would repeat for days."""
    evt = _session_event(amount_total=2**70)
    body, header = so.signed(evt, SECRET)
    for _ in range(3):
        (outcome,) = receive_many(
            engine, [Delivery(body, header)], secrets=[SECRET], tolerance=300, ctx=Context()
        )
        assert (outcome.status, outcome.result) == (200, "unprocessable")
    with Session(engine) as session:
        row = session.get(StripeEvent, evt["id"])
        assert row is not None
        assert (row.status, row.deliveries) == ("unprocessable", 3)
        assert row.last_error == "data.object.amount_total: integer out of range"
    assert _count(engine, Order) == 0
