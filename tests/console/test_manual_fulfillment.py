"""Guarded manual fulfillment: allowed only when our tables and Stripe (asked live, over HTTP to
a loopback fake) agree the order is paid, unrefunded and undisputed; requested by one person,
approved by another; exactly one fulfillment whoever races; every attempt audited."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from core.auth.permissions import Actor, PermissionDenied
from core.console.fulfillment import (
    approve_request,
    perform_manual_fulfillment,
    reject_request,
    request_manual_fulfillment,
)
from core.console.reconcile import reconcile
from core.console.stripe_api import StripeApi
from core.db import session_scope
from core.models import AuditEntry, Fulfillment, FulfillmentRequest, Order
from core.webhook import orders
from core.webhook.handlers import Context
from core.webhook.receive import apply_event
from tests.support import stripe_objects as so
from tests.support.stripe_standin import FakeStripe

SUPPORT = Actor("sam", "support")
FINANCE = Actor("fran", "finance")
ADMIN = Actor("alice", "admin")
ADMIN2 = Actor("bob", "admin")
REASON = "Fulfiller crashed during the outage of 12 May; customer emailed us."
PAID_AT = datetime.now(UTC) - timedelta(hours=2)


@pytest.fixture
def client(fake: FakeStripe) -> StripeApi:
    return StripeApi("sk_test_manual", api_base=fake.url)


def paid_order(
    engine: Engine,
    fake: FakeStripe,
    *,
    stripe_session: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    local: Callable[[Order], None] | None = None,
) -> tuple[int, dict[str, Any]]:
    """An order paid in our tables but not fulfilled, and the matching Checkout Session,
    PaymentIntent and charge at the fake Stripe (each changeable by a case)."""
    checkout = so.checkout_session(
        amount_total=2500, currency="usd", created=int(PAID_AT.timestamp())
    )
    intent = so.payment_intent(intent_id=checkout["payment_intent"], amount=2500, currency="usd")
    intent["latest_charge"] = so.charge(payment_intent=intent["id"], amount=2500)
    ours = {"session": checkout["id"], "intent": intent["id"]}
    if stripe_session:
        stripe_session(checkout, intent)
    fake.add_session(checkout, intent)
    with (
        session_scope(engine) as session,
        orders.locked_order(
            session,
            checkout_session_id=ours["session"],
            payment_intent_id=ours["intent"],
            defaults={"created_at": PAID_AT - timedelta(minutes=1)},
        ) as order,
    ):
        order.amount_total, order.currency = 2500, "usd"
        orders.mark_paid(order, PAID_AT)
        if local:
            local(order)
        orders.refresh_status(session, order, event_id=None, actor=None, at=PAID_AT)
    return order.id, checkout


def fulfillments(engine: Engine) -> list[tuple[int, str, str | None]]:
    with session_scope(engine, write=False) as session:
        return [
            (f.order_id, f.source, f.actor)
            for f in session.execute(select(Fulfillment).order_by(Fulfillment.id)).scalars()
        ]


def audit_rows(engine: Engine) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    with session_scope(engine, write=False) as session:
        return [
            (a.action, a.actor, a.stripe_request_id, a.details)
            for a in session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars()
        ]


# --- The happy path: request by support, approval by another admin -----------------------------


def test_support_requests_and_another_admin_approves(
    engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    order_id, checkout = paid_order(engine, fake)
    asked = request_manual_fulfillment(engine, SUPPORT, order_id, REASON, str(order_id))
    assert asked.result == "requested" and asked.request_id is not None
    assert fulfillments(engine) == []
    assert not fake.requests  # a request alone does not ask Stripe

    done = approve_request(engine, client, ADMIN, asked.request_id, str(order_id))
    assert done.result == "fulfilled", done.message
    assert fulfillments(engine) == [(order_id, "manual", "alice")]
    (seen,) = fake.requests
    assert seen.path == f"/v1/checkout/sessions/{checkout['id']}"
    assert seen.params["expand"] == ["payment_intent", "payment_intent.latest_charge"]

    with session_scope(engine, write=False) as session:
        request = session.get(FulfillmentRequest, asked.request_id)
        assert request is not None
        assert (request.status, request.decided_by, request.outcome) == (
            "done",
            "alice",
            "fulfilled",
        )
        order = session.get(Order, order_id)
        assert order is not None and order.status == "fulfilled"
    actions = audit_rows(engine)
    assert [a[0] for a in actions] == ["fulfillment.requested", "fulfillment.manual"]
    assert actions[1][2] == done.stripe_request_id and str(done.stripe_request_id).startswith(
        "req_"
    )
    assert actions[1][3]["reason"] == REASON

    again = approve_request(engine, client, ADMIN2, asked.request_id, str(order_id))
    assert again.result == "refused" and "already done" in again.message


# --- Refusals -----------------------------------------------------------------------------------


def _unpaid(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    cs["payment_status"] = "unpaid"


def _pi_processing(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    pi["status"] = "processing"


def _amount(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    cs["amount_total"] = 2400


def _currency(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    cs["currency"] = "eur"


def _received(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    pi["amount_received"] = 1000


def _refunded_at_stripe(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    pi["latest_charge"]["amount_refunded"] = 500


def _disputed_at_stripe(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    pi["latest_charge"]["disputed"] = True


def _other_intent(cs: dict[str, Any], pi: dict[str, Any]) -> None:
    pi["id"] = cs["payment_intent"] = "pi_someone_else"


@pytest.mark.parametrize(
    ("stripe_side", "message"),
    [
        (_unpaid, "Stripe says the session is not paid (unpaid)"),
        (_pi_processing, "PaymentIntent has not succeeded (processing)"),
        (_amount, "amount differs: Stripe 2400, ours 2500"),
        (_currency, "currency differs: Stripe eur, ours usd"),
        (_received, "amount received differs: Stripe 1000, ours 2500"),
        (_refunded_at_stripe, "Stripe shows a refund"),
        (_disputed_at_stripe, "Stripe shows a dispute"),
        (_other_intent, "not the one we recorded"),
    ],
)
def test_refused_when_stripe_does_not_confirm(
    sqlite_engine: Engine,
    fake: FakeStripe,
    client: StripeApi,
    stripe_side: Callable[[dict[str, Any], dict[str, Any]], None],
    message: str,
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake, stripe_session=stripe_side)
    outcome = perform_manual_fulfillment(
        sqlite_engine, client, ADMIN, order_id, REASON, str(order_id)
    )
    assert outcome.result == "refused"
    assert message in outcome.message
    assert fulfillments(sqlite_engine) == []
    (entry,) = audit_rows(sqlite_engine)
    assert entry[0] == "fulfillment.manual_refused" and message in entry[3]["why"]
    assert entry[2] == outcome.stripe_request_id and entry[2]


def _fulfilled(order: Order) -> None:
    order.fulfilled_at = PAID_AT


def _refunded(order: Order) -> None:
    orders.mark_refunded(order, 2500, PAID_AT)


def _partly_refunded(order: Order) -> None:
    orders.mark_refunded(order, 100, PAID_AT)


def _disputed(order: Order) -> None:
    orders.mark_disputed(order, PAID_AT)


def _not_paid(order: Order) -> None:
    order.paid_at = None


@pytest.mark.parametrize(
    ("local", "result", "message"),
    [
        (_fulfilled, "already_fulfilled", "is already fulfilled"),
        (_refunded, "refused", "refunded"),
        (_partly_refunded, "refused", "refunded"),
        (_disputed, "refused", "disputed"),
        (_not_paid, "refused", "not paid in our records (status pending)"),
    ],
)
def test_refused_by_our_own_tables_without_asking_stripe(
    sqlite_engine: Engine,
    fake: FakeStripe,
    client: StripeApi,
    local: Callable[[Order], None],
    result: str,
    message: str,
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake, local=local)
    outcome = perform_manual_fulfillment(
        sqlite_engine, client, ADMIN, order_id, REASON, str(order_id)
    )
    assert (outcome.result, outcome.ok) == (result, False)
    assert message in outcome.message
    assert not fake.requests
    assert [a[0] for a in audit_rows(sqlite_engine)] == ["fulfillment.manual_refused"]
    requested = request_manual_fulfillment(sqlite_engine, SUPPORT, order_id, REASON, str(order_id))
    assert requested.result == result and message in requested.message


@pytest.mark.parametrize(
    ("reason", "confirmation", "message"),
    [
        ("too short", "{id}", "at least 10 characters"),
        ("          ", "{id}", "at least 10 characters"),
        (REASON, "", "Type the order id"),
        (REASON, "{id}0", "Type the order id"),
    ],
)
def test_reason_and_typed_confirmation_are_required(
    sqlite_engine: Engine,
    fake: FakeStripe,
    client: StripeApi,
    reason: str,
    confirmation: str,
    message: str,
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake)
    typed = confirmation.format(id=order_id)
    for outcome in (
        perform_manual_fulfillment(sqlite_engine, client, ADMIN, order_id, reason, typed),
        request_manual_fulfillment(sqlite_engine, SUPPORT, order_id, reason, typed),
    ):
        assert outcome.result == "refused" and message in outcome.message
    assert not fake.requests and fulfillments(sqlite_engine) == []


def test_nobody_approves_their_own_request(
    sqlite_engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake)
    asked = request_manual_fulfillment(sqlite_engine, ADMIN, order_id, REASON, str(order_id))
    assert asked.request_id is not None
    own = approve_request(sqlite_engine, client, ADMIN, asked.request_id, str(order_id))
    assert own.result == "refused" and "your own request" in own.message
    assert not fake.requests and fulfillments(sqlite_engine) == []
    assert audit_rows(sqlite_engine)[-1][3]["why"] == "approver is the requester"
    other = approve_request(sqlite_engine, client, ADMIN2, asked.request_id, str(order_id))
    assert other.result == "fulfilled"


def test_permissions_are_checked_in_core(
    sqlite_engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake)
    with pytest.raises(PermissionDenied):
        request_manual_fulfillment(sqlite_engine, FINANCE, order_id, REASON, str(order_id))
    with pytest.raises(PermissionDenied):
        perform_manual_fulfillment(sqlite_engine, client, SUPPORT, order_id, REASON, str(order_id))
    asked = request_manual_fulfillment(sqlite_engine, SUPPORT, order_id, REASON, str(order_id))
    assert asked.request_id is not None
    with pytest.raises(PermissionDenied):
        approve_request(sqlite_engine, client, SUPPORT, asked.request_id, str(order_id))
    with pytest.raises(PermissionDenied):
        reject_request(sqlite_engine, SUPPORT, asked.request_id, "not needed any more")
    assert not fake.requests and fulfillments(sqlite_engine) == []
    denied = [a for a in audit_rows(sqlite_engine) if a[0] == "permission_denied"]
    assert len(denied) == 4


def test_a_second_request_for_the_same_order_points_at_the_first(
    sqlite_engine: Engine, fake: FakeStripe
) -> None:
    order_id, _ = paid_order(sqlite_engine, fake)
    first = request_manual_fulfillment(sqlite_engine, SUPPORT, order_id, REASON, str(order_id))
    second = request_manual_fulfillment(sqlite_engine, ADMIN, order_id, REASON, str(order_id))
    assert second.request_id == first.request_id and "already waiting" in second.message
    rejected = reject_request(
        sqlite_engine, ADMIN, int(str(first.request_id)), "customer cancelled"
    )
    assert rejected.result == "rejected"


# --- The race: webhook, two admins and a reconciliation, at once -------------------------------


def test_race_gives_exactly_one_fulfillment(engine: Engine, fake: FakeStripe) -> None:
    order_id, checkout = paid_order(engine, fake)
    completed = so.event(
        "checkout.session.completed", checkout, created=int(PAID_AT.timestamp()) + 1
    )
    fake.add_event(completed)
    ctx = Context()
    barrier = threading.Barrier(4)
    results: dict[str, Any] = {}

    def webhook() -> None:
        barrier.wait()
        with session_scope(engine) as session:
            results["webhook"] = apply_event(session, completed, ctx, "webhook")

    def admin(actor: Actor) -> Callable[[], None]:
        def run() -> None:
            own_client = StripeApi("sk_test_race", api_base=fake.url)
            barrier.wait()
            results[actor.username] = perform_manual_fulfillment(
                engine, own_client, actor, order_id, REASON, str(order_id)
            ).result

        return run

    def reconciliation() -> None:
        own_client = StripeApi("sk_test_race", api_base=fake.url)
        barrier.wait()
        results["reconcile"] = reconcile(engine, own_client, ctx, Actor("cron")).applied

    threads = [
        threading.Thread(target=fn) for fn in (webhook, admin(ADMIN), admin(ADMIN2), reconciliation)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4, results

    done = fulfillments(engine)
    assert len(done) == 1 and done[0][0] == order_id
    manual_wins = [name for name in ("alice", "bob") if results[name] == "fulfilled"]
    assert all(results[name] in ("fulfilled", "already_fulfilled") for name in ("alice", "bob"))
    event_applied = results["webhook"] == "processed" or results["reconcile"] == [completed["id"]]
    assert event_applied  # the event is applied once, by one of them
    assert len(manual_wins) + (1 if done[0][1] != "manual" else 0) == 1
    with session_scope(engine, write=False) as session:
        assert session.execute(select(func.count()).select_from(Fulfillment)).scalar_one() == 1
    attempts = [a for a in audit_rows(engine) if a[0].startswith("fulfillment.manual")]
    assert len(attempts) == 2  # both admins' attempts are in the audit log
