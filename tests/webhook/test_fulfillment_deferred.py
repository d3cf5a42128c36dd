"""A fulfiller that cannot complete now leaves the order paid, awaiting manual fulfillment;
a fulfiller that crashes rolls the whole event back so Stripe retries it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.models import Fulfillment, Order, StripeEvent
from core.webhook.fulfillment import FulfillmentDeferred
from core.webhook.handlers import Context
from core.webhook.receive import receive
from tests.conftest import SECRET
from tests.support import stripe_objects as so


def _deliver(engine: Engine, evt: dict[str, Any], ctx: Context) -> int:
    body, header = so.signed(evt, SECRET)
    return receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx).status


def _defer(session: Session, order: Order) -> None:
    raise FulfillmentDeferred("warehouse system unavailable")


def test_deferred_fulfillment_keeps_the_payment(engine: Engine) -> None:
    evt = so.event("checkout.session.completed", so.checkout_session())
    assert _deliver(engine, evt, Context(fulfiller=_defer)) == 200
    with session_scope(engine, write=False) as session:
        order = session.execute(select(Order)).scalar_one()
        assert (order.status, order.fulfilled_at) == ("paid", None)
        assert order.paid_at is not None
        assert session.scalar(select(func.count()).select_from(Fulfillment)) == 0
        assert session.get(StripeEvent, evt["id"]).status == "processed"  # type: ignore[union-attr]

    # A later event for the same session fulfils it, exactly once.
    again = so.event("checkout.session.async_payment_succeeded", evt["data"]["object"])
    assert _deliver(engine, again, Context()) == 200
    with session_scope(engine, write=False) as session:
        assert session.execute(select(Order.status)).scalar_one() == "fulfilled"
        assert session.scalar(select(func.count()).select_from(Fulfillment)) == 1


def test_crashing_fulfiller_rolls_back_the_event(engine: Engine) -> None:
    def crash(session: Session, order: Order) -> None:
        raise RuntimeError("bug")

    evt = so.event("checkout.session.completed", so.checkout_session())
    assert _deliver(engine, evt, Context(fulfiller=crash)) == 500
    with session_scope(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 0
        assert session.get(StripeEvent, evt["id"]).status == "failed"  # type: ignore[union-attr]
