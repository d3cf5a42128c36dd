"""Order states and payment attempts through the real webhook path, on SQLite and PostgreSQL:
every arrival order of an order's events ends in the same state; late events never undo newer
states; attempts read card, decline and network fields from where Stripe puts them."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.models import Fulfillment, Order, OrderTransition, PaymentAttempt
from core.webhook.handlers import Context
from core.webhook.orders import RANK
from core.webhook.receive import receive
from tests.conftest import SECRET
from tests.support import stripe_objects as so

T0 = int(time.time()) - 3600  # the order's story, an hour ago


def deliver(engine: Engine, evt: dict[str, Any], ctx: Context | None = None) -> str:
    body, header = so.signed(evt, SECRET)
    outcome = receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx or Context())
    assert outcome.status == 200, outcome
    return outcome.result


def at(offset: int) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def story(n: int) -> dict[str, dict[str, Any]]:
    """One order's events, created in their real order: a declined attempt, the paid session,
    a partial refund, a dispute; plus a (contradictory) expiry of the same session."""
    cs, pi = f"cs_test_perm{n:04d}", f"pi_perm{n:04d}"
    failed_charge = f"ch_perm{n:04d}_declined"
    good_charge = f"ch_perm{n:04d}_paid"
    session_obj = so.checkout_session(
        session_id=cs, payment_intent=pi, amount_total=5000, created=T0 - 60
    )
    declined = so.payment_intent(
        intent_id=pi, succeeded=False, amount=5000, charge_id=failed_charge, last4="0341"
    )
    refunded = so.charge(
        charge_id=good_charge, payment_intent=pi, amount=5000, amount_refunded=1500
    )
    return {
        "failed_attempt": so.event("payment_intent.payment_failed", declined, created=T0 - 30),
        "completed": so.event("checkout.session.completed", session_obj, created=T0),
        "refunded": so.event("charge.refunded", refunded, created=T0 + 100),
        "disputed": so.event(
            "charge.dispute.created",
            so.dispute(charge_id=good_charge, payment_intent=pi),
            created=T0 + 200,
        ),
        "expired": so.event(
            "checkout.session.expired",
            dict(session_obj, status="expired", payment_status="unpaid"),
            created=T0 + 300,
        ),
    }


def order_state(session: Session, checkout_session_id: str) -> dict[str, Any]:
    order = session.execute(
        select(Order).where(Order.checkout_session_id == checkout_session_id)
    ).scalar_one()
    attempts = session.scalars(
        select(PaymentAttempt).where(PaymentAttempt.payment_intent_id == order.payment_intent_id)
    ).all()
    return {
        "status": order.status,
        "payment_intent_id": order.payment_intent_id,
        "amount_total": order.amount_total,
        "amount_refunded": order.amount_refunded,
        "currency": order.currency,
        "customer_email": order.customer_email,
        "paid_at": order.paid_at,
        "refunded_at": order.refunded_at,
        "disputed_at": order.disputed_at,
        "expired_at": order.expired_at,
        "attempts": sorted((a.id, a.outcome, a.order_id == order.id) for a in attempts),
    }


def test_every_permutation_of_an_orders_events_ends_in_the_same_state(engine: Engine) -> None:
    names = ("completed", "refunded", "expired", "failed_attempt", "disputed")
    orders_seen: list[str] = []
    fulfilled_expected: dict[str, bool] = {}
    for n, permutation in enumerate(itertools.permutations(names)):
        events = story(n)
        for name in permutation:
            assert deliver(engine, events[name]) == "processed"
        cs = events["completed"]["data"]["object"]["id"]
        orders_seen.append(cs)
        # Fulfilment is only right while the order is merely paid: if the refund or the
        # dispute was already known when the payment arrived, nothing is shipped.
        position = permutation.index
        fulfilled_expected[cs] = position("completed") < min(
            position("refunded"), position("disputed")
        )

    assert len(orders_seen) == 120
    with Session(engine) as session:
        states = []
        for n, cs in enumerate(orders_seen):
            state = order_state(session, cs)
            assert state["payment_intent_id"] == f"pi_perm{n:04d}"
            state["payment_intent_id"] = None
            state["attempts"] = [(a[0].split("_")[-1], *a[1:]) for a in state["attempts"]]
            states.append(state)
        assert states[0] == {
            "status": "disputed",
            "payment_intent_id": None,
            "amount_total": 5000,
            "amount_refunded": 1500,
            "currency": "usd",
            "customer_email": "jenny.rosen@example.com",
            "paid_at": at(0),
            "refunded_at": at(100),
            "disputed_at": at(200),
            "expired_at": at(300),
            "attempts": [("declined", "failed", True)],
        }
        assert all(state == states[0] for state in states)
        assert session.scalar(select(Order.id).where(Order.checkout_session_id.is_(None))) is None

        fulfilled = {
            cs
            for (cs,) in session.execute(
                select(Order.checkout_session_id).join(
                    Fulfillment, Fulfillment.order_id == Order.id
                )
            )
        }
        assert fulfilled == {cs for cs, yes in fulfilled_expected.items() if yes}
        assert 0 < len(fulfilled) < 120

        # Transitions only ever move forward.
        transitions = session.execute(
            select(
                OrderTransition.order_id, OrderTransition.from_status, OrderTransition.to_status
            ).order_by(OrderTransition.order_id, OrderTransition.id)
        ).all()
        for _order_id, rows in itertools.groupby(transitions, key=lambda r: r[0]):
            chain = [r[1] for r in rows]
            assert chain == sorted(chain, key=RANK.__getitem__)
        for _order_id, from_status, to_status in transitions:
            assert RANK[to_status] > RANK[from_status]


# --- Late events --------------------------------------------------------------------------------


LATE_CASES: list[tuple[str, list[str], str, int]] = [
    # name, events delivered in this order, final status, final amount_refunded
    ("unpaid completion after payment", ["completed", "stale_unpaid"], "fulfilled", 0),
    ("expiry after payment", ["completed", "expired"], "fulfilled", 0),
    ("async failure after payment", ["completed", "async_failed"], "fulfilled", 0),
    (
        "smaller refund after a larger one",
        ["completed", "refund_2000", "refund_500"],
        "partially_refunded",
        2000,
    ),
    (
        "partial refund after a full one",
        ["completed", "refund_full", "refund_500"],
        "refunded",
        5000,
    ),
    ("payment after a dispute", ["completed", "disputed", "async_succeeded"], "disputed", 0),
    ("refund after a dispute", ["completed", "disputed", "refund_500"], "disputed", 500),
]


def late_events(n: int) -> dict[str, dict[str, Any]]:
    cs, pi, ch = f"cs_test_late{n:03d}", f"pi_late{n:03d}", f"ch_late{n:03d}"
    paid = so.checkout_session(session_id=cs, payment_intent=pi, amount_total=5000)
    unpaid = dict(paid, payment_status="unpaid", status="open")

    def refund(amount: int, created: int) -> dict[str, Any]:
        charge = so.charge(charge_id=ch, payment_intent=pi, amount=5000, amount_refunded=amount)
        return so.event("charge.refunded", charge, created=created)

    return {
        "stale_unpaid": so.event("checkout.session.completed", unpaid, created=T0 - 100),
        "completed": so.event("checkout.session.completed", paid, created=T0),
        "async_succeeded": so.event("checkout.session.async_payment_succeeded", paid, created=T0),
        "expired": so.event("checkout.session.expired", unpaid, created=T0 - 50),
        "async_failed": so.event("checkout.session.async_payment_failed", unpaid, created=T0 - 5),
        "refund_500": refund(500, T0 + 10),
        "refund_2000": refund(2000, T0 + 20),
        "refund_full": refund(5000, T0 + 30),
        "disputed": so.event(
            "charge.dispute.created", so.dispute(charge_id=ch, payment_intent=pi), created=T0 + 40
        ),
    }


def test_an_older_event_arriving_late_never_undoes_a_newer_state(engine: Engine) -> None:
    for n, (name, sequence, status, refunded) in enumerate(LATE_CASES):
        events = late_events(n)
        statuses = []
        for step in sequence:
            deliver(engine, events[step])
            with Session(engine) as session:
                order = session.execute(
                    select(Order).where(Order.checkout_session_id == f"cs_test_late{n:03d}")
                ).scalar_one()
                statuses.append(order.status)
        assert (order.status, order.amount_refunded) == (status, refunded), name
        ranks = [RANK[s] for s in statuses]
        assert ranks == sorted(ranks), (name, statuses)


# --- Payment attempts ---------------------------------------------------------------------------


def attempts(engine: Engine) -> list[PaymentAttempt]:
    with Session(engine) as session:
        return list(session.scalars(select(PaymentAttempt).order_by(PaymentAttempt.id)))


def test_a_declined_charge_is_read_from_where_stripe_puts_it(engine: Engine) -> None:
    charge = so.charge(
        payment_intent="pi_declined_1",
        succeeded=False,
        decline_code="stolen_card",
        fingerprint="Xt5EWLLDS7FJjR1c",
        last4="0341",
        client_ip="203.0.113.9",
        email="mallory@example.com",
    )
    charge["payment_method_details"]["card"]["brand"] = "mastercard"
    deliver(engine, so.event("charge.failed", charge))
    (attempt,) = attempts(engine)
    assert {
        "id": attempt.id,
        "payment_intent_id": attempt.payment_intent_id,
        "outcome": attempt.outcome,
        "failure_code": attempt.failure_code,
        "decline_code": attempt.decline_code,
        "network_status": attempt.network_status,
        "card": (attempt.card_fingerprint, attempt.card_last4, attempt.card_brand),
        "ip": attempt.ip_address,
        "email": attempt.email,
        "amount": (attempt.amount, attempt.currency),
    } == {
        "id": charge["id"],
        "payment_intent_id": "pi_declined_1",
        "outcome": "failed",
        "failure_code": "card_declined",
        "decline_code": "stolen_card",
        "network_status": "declined_by_network",
        "card": ("Xt5EWLLDS7FJjR1c", "0341", "mastercard"),
        "ip": "203.0.113.9",
        "email": "mallory@example.com",
        "amount": (2500, "usd"),
    }


def test_a_failed_payment_intent_is_read_from_last_payment_error(engine: Engine) -> None:
    intent = so.payment_intent(
        succeeded=False, decline_code="insufficient_funds", fingerprint="Fp0341", last4="0341"
    )
    deliver(engine, so.event("payment_intent.payment_failed", intent))
    (attempt,) = attempts(engine)
    assert attempt.id == intent["last_payment_error"]["charge"]
    assert (attempt.outcome, attempt.failure_code, attempt.decline_code) == (
        "failed",
        "card_declined",
        "insufficient_funds",
    )
    assert (attempt.card_fingerprint, attempt.card_last4, attempt.card_brand) == (
        "Fp0341",
        "0341",
        "visa",
    )
    assert attempt.failure_message == "Your card was declined."


@pytest.mark.parametrize("charge_first", [True, False], ids=["charge-first", "intent-first"])
@pytest.mark.parametrize("succeeded", [True, False], ids=["succeeded", "declined"])
def test_a_charge_and_its_payment_intent_make_one_attempt(
    sqlite_engine: Engine, charge_first: bool, succeeded: bool
) -> None:
    check_one_attempt(sqlite_engine, charge_first, succeeded)


@pytest.mark.postgres
def test_a_charge_and_its_payment_intent_make_one_attempt_on_postgres(pg_engine: Engine) -> None:
    for charge_first, succeeded in itertools.product((True, False), repeat=2):
        check_one_attempt(pg_engine, charge_first, succeeded, clear=True)


def check_one_attempt(
    engine: Engine, charge_first: bool, succeeded: bool, *, clear: bool = False
) -> None:
    if clear:
        with Session(engine) as session:
            session.query(PaymentAttempt).delete()
            session.commit()
    intent = so.payment_intent(succeeded=succeeded, fingerprint="FpFromIntent", last4="4242")
    charge = so.charge(
        charge_id=intent["latest_charge"],
        payment_intent=intent["id"],
        succeeded=succeeded,
        fingerprint="FpFromIntent",
        last4="4242",
        client_ip="198.51.100.4",
    )
    kind = "succeeded" if succeeded else "failed"
    pi_event = so.event(
        "payment_intent.succeeded" if succeeded else "payment_intent.payment_failed", intent
    )
    charge_event = so.event(f"charge.{kind}", charge)
    for evt in (charge_event, pi_event) if charge_first else (pi_event, charge_event):
        assert deliver(engine, evt) == "processed"
    (attempt,) = attempts(engine)
    assert attempt.id == charge["id"]
    assert attempt.payment_intent_id == intent["id"]
    assert attempt.outcome == ("succeeded" if succeeded else "failed")
    # The charge brings what the intent lacks (network status, IP), and the other way round.
    assert attempt.network_status == ("approved_by_network" if succeeded else "declined_by_network")
    assert attempt.ip_address == "198.51.100.4"
    assert (attempt.card_fingerprint, attempt.card_last4) == ("FpFromIntent", "4242")
    if not succeeded:
        assert (attempt.failure_code, attempt.decline_code) == (
            "card_declined",
            "insufficient_funds",
        )


def test_an_attempt_before_its_order_is_linked_when_the_order_arrives(engine: Engine) -> None:
    session_obj = so.checkout_session()
    intent = so.payment_intent(intent_id=session_obj["payment_intent"], succeeded=False)
    deliver(engine, so.event("payment_intent.payment_failed", intent))
    assert attempts(engine)[0].order_id is None
    deliver(engine, so.event("checkout.session.completed", session_obj))
    with Session(engine) as session:
        order_id = session.scalars(select(Order.id)).one()
    assert attempts(engine)[0].order_id == order_id


@pytest.mark.parametrize("shape", ["latest_charge-expanded", "legacy-charges-list"])
@pytest.mark.parametrize("succeeded", [True, False], ids=["succeeded", "declined"])
def test_an_intent_with_its_charge_expanded_gives_the_charges_details(
    sqlite_engine: Engine, shape: str, succeeded: bool
) -> None:
    """Expanded charges (and the pre-2022-11-15 `charges` list that localstripe sends) carry
    the card, outcome and network status: the attempt takes them, keyed by the charge id."""
    charge = so.charge(succeeded=succeeded, fingerprint="FpExpanded", last4="1881")
    intent = so.payment_intent(succeeded=succeeded, charge_id=charge["id"])
    charge["payment_intent"] = intent["id"]
    if not succeeded:
        intent["last_payment_error"] = {
            "charge": charge["id"],
            "code": "card_declined",
            "message": "Your card was declined.",
        }
    if shape == "latest_charge-expanded":
        intent["latest_charge"] = charge
    else:
        intent.pop("latest_charge")
        intent["charges"] = {"object": "list", "data": [charge], "has_more": False}
    kind = "payment_intent.succeeded" if succeeded else "payment_intent.payment_failed"
    deliver(sqlite_engine, so.event(kind, intent))
    # From the intent's event alone (localstripe sends no charge events):
    (attempt,) = attempts(sqlite_engine)
    assert attempt.id == charge["id"]
    assert (attempt.card_fingerprint, attempt.card_last4, attempt.card_brand) == (
        "FpExpanded",
        "1881",
        "visa",
    )
    assert attempt.network_status == ("approved_by_network" if succeeded else "declined_by_network")
    if not succeeded:
        assert (attempt.failure_code, attempt.decline_code) == (
            "card_declined",
            "insufficient_funds",
        )
    # The charge's own event later completes the same row.
    deliver(sqlite_engine, so.event(f"charge.{'succeeded' if succeeded else 'failed'}", charge))
    assert [a.id for a in attempts(sqlite_engine)] == [charge["id"]]


def test_concurrent_events_of_one_order_end_in_the_same_state(engine: Engine) -> None:
    """The five events of an order delivered at the same moment (as Stripe may do): row locks
    and unique keys, not arrival order, decide; the state is the one every permutation gives."""
    import threading

    orders_count = 8
    stories = [story(1000 + n) for n in range(orders_count)]
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def send(evt: dict[str, Any]) -> None:
        try:
            barrier.wait(timeout=30)
            assert deliver(engine, evt) == "processed"
        except BaseException as exc:
            errors.append(exc)

    for events in stories:
        threads = [threading.Thread(target=send, args=(evt,)) for evt in events.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    with Session(engine) as session:
        for events in stories:
            state = order_state(session, events["completed"]["data"]["object"]["id"])
            assert (state["status"], state["amount_total"], state["amount_refunded"]) == (
                "disputed",
                5000,
                1500,
            )
            assert (state["paid_at"], state["disputed_at"]) == (at(0), at(200))
            assert [a[1:] for a in state["attempts"]] == [("failed", True)]
        assert session.scalar(select(func.count()).select_from(Order)) == orders_count
