"""Support's order view in core: search that opens what was asked, the order's header facts read
from Stripe's payloads, and a timeline of business events (issue 13, findings 7 and 8).

Orders are built through the real webhook path (signed Stripe-shaped events, the handlers),
from Stripe's example objects in tests/fixtures/ (refund.json is Stripe's refund example)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from core.auth import audit
from core.auth.permissions import Actor
from core.console import fulfillment, orders, timeline
from core.db import session_scope
from core.models import Order
from core.webhook import orders as webhook_orders
from core.webhook.handlers import Context
from core.webhook.receive import receive
from tests.conftest import SECRET
from tests.support import stripe_objects as so

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RESPOND_BY = datetime(2026, 11, 20, 23, 59, 59, tzinfo=UTC)


def deliver(engine: Engine, event_type: str, obj: dict[str, Any], at: datetime) -> str:
    """Stripe creates the event at `at` and delivers it, signed, 2 s later; the event id."""
    evt = so.event(event_type, obj, created=int(at.timestamp()))
    received = at + timedelta(seconds=2)
    body, header = so.signed(evt, SECRET, timestamp=int(received.timestamp()))
    outcome = receive(
        engine, body, header, secrets=[SECRET], tolerance=300, ctx=Context(clock=lambda: received)
    )
    assert outcome.result == "processed", outcome
    return str(evt["id"])


def refund_object(refund_id: str, charge_id: str, amount: int, at: datetime) -> dict[str, Any]:
    refund = so.example("refund")
    refund.update(
        id=refund_id,
        charge=charge_id,
        amount=amount,
        created=int(at.timestamp()),
        reason="requested_by_customer",
    )
    return refund


@dataclass(frozen=True)
class Shop:
    engine: Engine
    jenny: int  # declined once, paid USD 25.00, refunded USD 10.00 then USD 15.00
    jenny_ids: dict[str, str]
    claire: int  # paid EUR 19.99, then disputed (product not received)
    collider: int  # paid with a card whose last4 is jenny's order id on 4 digits


def paid_order(
    engine: Engine, at: datetime, *, email: str, amount: int, currency: str, last4: str
) -> dict[str, str]:
    ids = {"pi": so.unique("pi"), "cs": so.unique("cs_test"), "customer": so.unique("cus")}
    charge = so.charge(
        payment_intent=ids["pi"],
        amount=amount,
        currency=currency,
        last4=last4,
        created=int(at.timestamp()),
    )
    ids["charge"] = charge["id"]
    deliver(engine, "charge.succeeded", charge, at)
    session = so.checkout_session(
        session_id=ids["cs"],
        payment_intent=ids["pi"],
        amount_total=amount,
        currency=currency,
        email=email,
        customer=ids["customer"],
        created=int((at - timedelta(minutes=5)).timestamp()),
    )
    deliver(engine, "checkout.session.completed", session, at + timedelta(seconds=30))
    return ids


def order_id(engine: Engine, checkout_session: str) -> int:
    with session_scope(engine, write=False) as session:
        return int(
            session.execute(
                select(Order.id).where(Order.checkout_session_id == checkout_session)
            ).scalar_one()
        )


@pytest.fixture
def shop(engine: Engine) -> Iterator[Shop]:
    declined = so.charge(
        succeeded=False,
        decline_code="insufficient_funds",
        last4="4242",
        created=int((T - timedelta(minutes=3)).timestamp()),
    )
    jenny = paid_order(
        engine, T, email="jenny.rosen@example.com", amount=2500, currency="usd", last4="4242"
    )
    declined["payment_intent"] = jenny["pi"]
    deliver(engine, "charge.failed", declined, T - timedelta(minutes=3))
    first = refund_object("re_test_first", jenny["charge"], 1000, T + timedelta(hours=1))
    second = refund_object("re_test_second", jenny["charge"], 1500, T + timedelta(hours=2))
    for at, refunded, listed in (
        (T + timedelta(hours=1), 1000, [first]),
        (T + timedelta(hours=2), 2500, [second, first]),
    ):
        charge = so.charge(
            charge_id=jenny["charge"],
            payment_intent=jenny["pi"],
            amount=2500,
            amount_refunded=refunded,
        )
        charge["refunds"] = {"object": "list", "data": listed, "has_more": False}
        deliver(engine, "charge.refunded", charge, at)

    claire = paid_order(
        engine,
        T + timedelta(hours=3),
        email="claire.dubois@shop.example.fr",
        amount=1999,
        currency="eur",
        last4="5556",
    )
    dispute = so.dispute(charge_id=claire["charge"], payment_intent=claire["pi"])
    dispute.update(amount=1999, currency="eur", reason="product_not_received")
    dispute["evidence_details"]["due_by"] = int(RESPOND_BY.timestamp())
    deliver(engine, "charge.dispute.created", dispute, T + timedelta(hours=4))

    jenny_id = order_id(engine, jenny["cs"])
    collider = paid_order(
        engine,
        T + timedelta(hours=5),
        email="someone@example.org",
        amount=500,
        currency="usd",
        last4=f"{jenny_id:04d}",
    )
    yield Shop(
        engine, jenny_id, jenny, order_id(engine, claire["cs"]), order_id(engine, collider["cs"])
    )


# --- Finding 7: search opens what was asked --------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        lambda s: f"#{s.jenny}",
        lambda s: f"  # {s.jenny} ",
        lambda s: str(s.jenny),
        lambda s: s.jenny_ids["cs"],
        lambda s: s.jenny_ids["pi"],
        lambda s: s.jenny_ids["charge"],
    ],
    ids=["#id", "# id, spaced", "id", "Checkout Session", "PaymentIntent", "charge"],
)
def test_an_exact_id_opens_its_order(shop: Shop, query: Any) -> None:
    """Finding 7: "#1461", the format the page prints, found nothing; nothing opened on an
    exact id."""
    text = query(shop)
    with session_scope(shop.engine, write=False) as session:
        exact = orders.exact_match(session, text)
        found = orders.search_orders(session, text)
    assert exact == orders.Exact(order_id=shop.jenny)
    assert found["id"].iloc[0] == shop.jenny


def test_a_customer_id_opens_the_customer(shop: Shop) -> None:
    with session_scope(shop.engine, write=False) as session:
        exact = orders.exact_match(session, shop.jenny_ids["customer"])
        summary = orders.customer_summary(session, shop.jenny_ids["customer"])
        nobody = orders.exact_match(session, "cus_nobody")
    assert exact == orders.Exact(customer_id=shop.jenny_ids["customer"])
    assert summary is not None
    assert (summary.email, summary.orders, summary.paid_orders) == (
        "jenny.rosen@example.com",
        1,
        1,
    )
    assert nobody is None


@pytest.mark.parametrize("text", ["jenny.rosen@example.com", "4242", "#999999", "cs_test_none"])
def test_anything_else_opens_nothing_by_itself(shop: Shop, text: str) -> None:
    with session_scope(shop.engine, write=False) as session:
        assert orders.exact_match(session, text) is None


def test_four_digits_list_the_order_of_that_id_first_and_say_what_matched(shop: Shop) -> None:
    """Finding 7: `1461` returned four orders with order 1461 last, and nothing said that the
    others matched a card's last4."""
    digits = f"{shop.jenny:04d}"
    with session_scope(shop.engine, write=False) as session:
        found = orders.search_orders(session, digits)
    assert list(zip(found["id"], found["matched"], strict=True)) == [
        (shop.jenny, "order id"),
        (shop.collider, "card last4"),
    ]


@pytest.mark.parametrize(
    ("query", "matched"),
    [
        (lambda s: s.jenny_ids["cs"], "Checkout Session"),
        (lambda s: s.jenny_ids["pi"], "PaymentIntent"),
        (lambda s: s.jenny_ids["customer"], "customer"),
        (lambda s: "JENNY", "email"),
    ],
)
def test_results_name_the_field_that_matched(shop: Shop, query: Any, matched: str) -> None:
    with session_scope(shop.engine, write=False) as session:
        found = orders.search_orders(session, query(shop))
    assert list(found["matched"]) == [matched]


def test_an_email_domain_finds_every_order_from_it(shop: Shop) -> None:
    with session_scope(shop.engine, write=False) as session:
        domain = orders.search_orders(session, "@Shop.Example.FR")
        count = orders.count_orders(session, "@shop.example.fr")
        wildcard = orders.search_orders(session, "@%")
    assert list(domain["id"]) == [shop.claire] and count == 1
    assert list(domain["matched"]) == ["email domain"]
    assert wildcard.empty  # a wildcard is text


# --- Finding 8: the header's facts --------------------------------------------------------------


def test_the_header_reads_refunds_from_the_stored_payloads(shop: Shop) -> None:
    """Finding 8: a refund had no amount (nor when it happened)."""
    with session_scope(shop.engine, write=False) as session:
        order = orders.get_order(session, shop.jenny)
    assert order is not None
    assert [(r.amount, r.at, r.refund_id) for r in order.refunds] == [
        (1000, T + timedelta(hours=1), "re_test_first"),
        (1500, T + timedelta(hours=2), "re_test_second"),
    ]
    assert order.amount_refunded == 2500
    assert order.last_refund_at == T + timedelta(hours=2)
    assert order.paid_at is not None and order.fulfilled_at is not None


def test_the_header_reads_the_dispute_from_its_payload(shop: Shop) -> None:
    """Finding 8: a dispute had no reason, amount or respond-by date."""
    with session_scope(shop.engine, write=False) as session:
        order = orders.get_order(session, shop.claire)
    assert order is not None and order.dispute is not None
    dispute = order.dispute
    assert (dispute.reason, dispute.amount, dispute.currency) == (
        "product_not_received",
        1999,
        "eur",
    )
    assert dispute.respond_by == RESPOND_BY
    assert dispute.at == T + timedelta(hours=4)


# --- Finding 8: a timeline of business events ---------------------------------------------------


def entries_of(engine: Engine, order: int) -> list[timeline.TimelineEntry]:
    with session_scope(engine, write=False) as session:
        return timeline.order_timeline(session, order)


def test_each_payment_attempt_is_one_entry_with_its_reason_in_words(shop: Shop) -> None:
    """Finding 8: each payment attempt was three entries (attempt, event, delivery) full of
    ids; now one entry, its outcome and decline reason in words, the event folded under it."""
    entries = entries_of(shop.engine, shop.jenny)
    payments = [e for e in entries if e.kind == "payment"]
    assert [e.title for e in payments] == [
        "Payment of USD 25.00 declined: The card has insufficient funds (insufficient_funds)",
        "Payment of USD 25.00 succeeded",
    ]
    assert not [e for e in entries if e.kind in ("event", "delivery")]
    declined = payments[0]
    assert declined.facts["Card"].endswith("···· 4242")
    assert [ev.type for ev in declined.events] == ["charge.failed"]
    assert [(d.outcome, d.http_status) for d in declined.events[0].deliveries] == [
        ("processed", 200)
    ]
    # Ids are technical detail, not the sentence.
    assert "ch_" not in declined.title and "Attempt" in declined.technical


def test_refunds_are_entries_with_their_amounts(shop: Shop) -> None:
    """Finding 8: a refund had no amount."""
    entries = entries_of(shop.engine, shop.jenny)
    refunds = [(e.at, e.title, e.facts) for e in entries if e.kind == "refund"]
    assert refunds == [
        (
            T + timedelta(hours=1),
            "Refunded USD 10.00 (USD 10.00 of USD 25.00 refunded so far)",
            {"Reason": "requested by customer"},
        ),
        (
            T + timedelta(hours=2),
            "Refunded USD 15.00 (now in full: USD 25.00 of USD 25.00)",
            {"Reason": "requested by customer"},
        ),
    ]
    titles = [e.title for e in entries]
    assert titles.index("Paid USD 25.00") < titles.index(
        "Fulfilled automatically once the payment arrived"
    )


def test_a_dispute_entry_has_reason_amount_and_respond_by_with_the_zone(shop: Shop) -> None:
    """Finding 8: a dispute had no reason, amount or respond-by date; times had no zone."""
    (dispute,) = [e for e in entries_of(shop.engine, shop.claire) if e.kind == "dispute"]
    assert dispute.title == "The customer disputed the payment (EUR 19.99)"
    assert dispute.facts == {
        "Reason": "The customer says the product was not received (product_not_received)",
        "Amount": "EUR 19.99",
        "Respond by": "2026-11-20 23:59 UTC",
    }


def test_operator_entries_are_sentences_not_python_dicts(shop: Shop) -> None:
    """Finding 8: operator entries showed Python dicts."""
    with session_scope(shop.engine) as session:
        audit.record(
            session,
            Actor("alex", "admin"),
            "fulfillment.manual_refused",
            orders.order_target(shop.jenny),
            {"why": "refunded", "checks": {"stripe_paid": False}, "request_id": None},
            at=T + timedelta(hours=6),
        )
    (action,) = [e for e in entries_of(shop.engine, shop.jenny) if e.kind == "action"]
    assert action.title == "alex (admin) tried to fulfil the order by hand; it was refused"
    assert action.facts == {"Why": "refunded", "Checks": "Stripe paid: no"}
    assert not any("{" in value or "None" in value for value in action.facts.values())


def test_a_request_entry_does_not_show_the_status_it_reached_later(shop: Shop) -> None:
    """Finding 8: a fulfillment request showed "status: done" at the moment it was made."""
    admin, sam = Actor("alex", "admin"), Actor("sam", "support")
    with (
        session_scope(shop.engine) as session,
        webhook_orders.locked_order(
            session, checkout_session_id=so.unique("cs_test"), payment_intent_id=so.unique("pi")
        ) as order,
    ):  # paid in our tables, not fulfilled (the warehouse was down)
        order.amount_total, order.currency = 500, "usd"
        webhook_orders.mark_paid(order, T)
        webhook_orders.refresh_status(session, order, event_id=None, actor=None, at=T)
    unfulfilled = order.id
    requested = fulfillment.request_manual_fulfillment(
        shop.engine, sam, unfulfilled, "customer says nothing arrived", f"#{unfulfilled}"
    )
    assert requested.result == "requested", requested.message
    rejected = fulfillment.reject_request(
        shop.engine, admin, requested.request_id or 0, "paid by another order"
    )
    assert rejected.ok
    requests = [e for e in entries_of(shop.engine, unfulfilled) if e.kind == "request"]
    assert [e.title for e in requests] == [
        f"sam asked for a manual fulfillment (request #{requested.request_id})",
        f"alex rejected manual fulfillment request #{requested.request_id}",
    ]
    assert requests[0].facts == {"Reason": "customer says nothing arrived"}
    assert requests[1].facts == {"Note": "paid by another order"}


def test_requesting_fulfillment_of_a_refunded_order_says_refunded(shop: Shop) -> None:
    """Finding 8: requesting fulfillment for a refunded order said "already fulfilled"."""
    outcome = fulfillment.request_manual_fulfillment(
        shop.engine,
        Actor("sam", "support"),
        shop.jenny,
        "customer says nothing arrived",
        str(shop.jenny),
    )
    assert outcome.result == "refused"
    assert "refund" in outcome.message and "already fulfilled" not in outcome.message


def test_times_name_their_zone() -> None:
    assert timeline.when(datetime(2026, 12, 5, 9, 3, 59, tzinfo=UTC)) == "2026-12-05 09:03 UTC"
