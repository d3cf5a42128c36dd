"""Guarded manual fulfillment, for orders paid but not fulfilled (the fulfiller failed, a
webhook was lost).

Allowed only when our tables say paid AND Stripe confirms it live; a support user may request,
an admin approves (never their own request) or performs. Stripe is asked BEFORE the
transaction; the final checks run inside it with the order row locked, and
`core.webhook.fulfillment.fulfill` (UNIQUE order_id) makes it exactly once whoever races: the
webhook, two admins, a reconciliation run. Every attempt is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, PermissionDenied, require
from core.console.stripe_api import StripeApi, StripeProblem
from core.db import session_scope
from core.models import Fulfillment, FulfillmentRequest, Order, utcnow
from core.webhook.fulfillment import Fulfiller, fulfill, record_only
from core.webhook.orders import derive_status

log = logging.getLogger(__name__)


MIN_REASON_CHARS = 10


@dataclass(frozen=True)
class ManualOutcome:
    """What a manual-fulfillment action did; `message` is what the operator is told."""

    result: str  # fulfilled | already_fulfilled | requested | rejected | refused
    message: str
    order_id: int | None = None
    request_id: int | None = None
    stripe_request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("fulfilled", "requested", "rejected")


def input_problem(order_id: int, reason: str, confirmation: str) -> str | None:
    """The written reason and the typed confirmation (the order id), checked before anything."""
    if len(reason.strip()) < MIN_REASON_CHARS:
        return f"Write a reason of at least {MIN_REASON_CHARS} characters."
    if confirmation.strip().lstrip("#") != str(order_id):
        return f"Type the order id ({order_id}) to confirm."
    return None


def table_problem(order: Order, already_fulfilled: bool) -> str | None:
    """Why our own tables forbid a manual fulfillment of `order`, or None."""
    status = derive_status(order)
    # What is true now comes first: a refunded order may have been fulfilled before its refund,
    # and "already fulfilled" would hide that the money went back.
    if status in ("refunded", "partially_refunded"):
        return "refunded: an order with a refund is not fulfilled by hand"
    if status == "disputed":
        return "disputed: an order under dispute is not fulfilled by hand"
    if already_fulfilled or order.fulfilled_at is not None or status == "fulfilled":
        return "already fulfilled"
    if order.paid_at is None or status != "paid":
        return f"not paid in our records (status {status})"
    return None


def _id_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def stripe_problems(order: Order, checkout: dict[str, Any]) -> list[str]:
    """Why Stripe's live Checkout Session (PaymentIntent and charge expanded) does not confirm
    `order` as paid, unrefunded and undisputed, for the amount and currency we hold."""
    problems: list[str] = []
    currency = (order.currency or "").lower()
    if checkout.get("payment_status") != "paid":
        problems.append(f"Stripe says the session is not paid ({checkout.get('payment_status')})")
    if checkout.get("amount_total") != order.amount_total:
        problems.append(
            f"amount differs: Stripe {checkout.get('amount_total')}, ours {order.amount_total}"
        )
    if str(checkout.get("currency") or "").lower() != currency:
        problems.append(f"currency differs: Stripe {checkout.get('currency')}, ours {currency}")
    intent = checkout.get("payment_intent")
    if not isinstance(intent, dict):
        problems.append("Stripe shows no PaymentIntent for the session")
        return problems
    if order.payment_intent_id and intent.get("id") != order.payment_intent_id:
        problems.append("the session's PaymentIntent is not the one we recorded")
    if intent.get("status") != "succeeded":
        problems.append(f"Stripe says the PaymentIntent has not succeeded ({intent.get('status')})")
    received = intent.get("amount_received", intent.get("amount"))
    if received != order.amount_total:
        problems.append(f"amount received differs: Stripe {received}, ours {order.amount_total}")
    if str(intent.get("currency") or "").lower() != currency:
        problems.append("the PaymentIntent's currency differs from ours")
    charge = intent.get("latest_charge")
    if isinstance(charge, dict):
        refunded = charge.get("amount_refunded")
        if charge.get("refunded") or (isinstance(refunded, int) and refunded > 0):
            problems.append("Stripe shows a refund on the payment")
        if charge.get("disputed"):
            problems.append("Stripe shows a dispute on the payment")
    return problems


def _record(
    engine: Engine,
    actor: Actor,
    action: str,
    target: str | None,
    details: dict[str, Any],
    stripe_request_id: str | None = None,
) -> None:
    with session_scope(engine) as session:
        audit.record(session, actor, action, target, details, stripe_request_id=stripe_request_id)


def _require(engine: Engine, actor: Actor, permission: str, target: str) -> None:
    try:
        require(actor, permission)
    except PermissionDenied:
        _record(engine, actor, "permission_denied", target, {"permission": permission})
        raise


def _refuse(
    engine: Engine,
    actor: Actor,
    order_id: int | None,
    why: str,
    *,
    request_id: int | None = None,
    stripe_request_id: str | None = None,
) -> ManualOutcome:
    result = "already_fulfilled" if why == "already fulfilled" else "refused"
    _record(
        engine,
        actor,
        "fulfillment.manual_refused",
        f"order:{order_id}",
        {"why": why, "request_id": request_id},
        stripe_request_id,
    )
    message = (
        f"Order {order_id} is already fulfilled."
        if result == "already_fulfilled"
        else f"Order {order_id} cannot be fulfilled by hand: {why}."
    )
    return ManualOutcome(result, message, order_id, request_id, stripe_request_id)


def _has_fulfillment(session: Session, order_id: int) -> bool:
    found = session.execute(
        select(Fulfillment.id).where(Fulfillment.order_id == order_id)
    ).scalar_one_or_none()
    return found is not None


def request_manual_fulfillment(
    engine: Engine, actor: Actor, order_id: int, reason: str, confirmation: str
) -> ManualOutcome:
    """A support user (or an admin) asks for a manual fulfillment; someone else approves it."""
    _require(engine, actor, "fulfillment.request", f"order:{order_id}")
    problem = input_problem(order_id, reason, confirmation)
    if problem:
        return ManualOutcome("refused", problem, order_id)
    with session_scope(engine) as session:
        order = session.execute(
            select(Order).where(Order.id == order_id).with_for_update()
        ).scalar_one_or_none()
        why = "no such order" if order is None else None
        if order is not None:
            why = table_problem(order, _has_fulfillment(session, order_id))
        pending = session.execute(
            select(FulfillmentRequest.id).where(
                FulfillmentRequest.order_id == order_id, FulfillmentRequest.status == "pending"
            )
        ).scalar_one_or_none()
        if why is None and pending is not None:
            return ManualOutcome(
                "requested",
                f"A request for order {order_id} is already waiting for approval (#{pending}).",
                order_id,
                pending,
            )
        if why is None:
            request = FulfillmentRequest(
                order_id=order_id,
                requested_by=actor.username,
                requested_at=utcnow(),
                reason=reason.strip(),
                status="pending",
            )
            session.add(request)
            session.flush()
            audit.record(
                session,
                actor,
                "fulfillment.requested",
                f"order:{order_id}",
                {"request_id": request.id, "reason": request.reason},
            )
            return ManualOutcome(
                "requested",
                f"Requested manual fulfillment of order {order_id} (#{request.id}); "
                "an admin must approve it.",
                order_id,
                request.id,
            )
    return _refuse(engine, actor, order_id, why or "no such order")


def reject_request(engine: Engine, actor: Actor, request_id: int, note: str) -> ManualOutcome:
    """An admin declines a pending request (a requester may also withdraw their own)."""
    _require(engine, actor, "fulfillment.approve", f"fulfillment_request:{request_id}")
    if len(note.strip()) < MIN_REASON_CHARS:
        return ManualOutcome("refused", f"Write a note of at least {MIN_REASON_CHARS} characters.")
    with session_scope(engine) as session:
        request = session.execute(
            select(FulfillmentRequest).where(FulfillmentRequest.id == request_id).with_for_update()
        ).scalar_one_or_none()
        if request is None or request.status != "pending":
            return ManualOutcome("refused", f"Request #{request_id} is not pending.")
        request.status = "rejected"
        request.decided_by = actor.username
        request.decided_at = utcnow()
        request.outcome = note.strip()
        audit.record(
            session,
            actor,
            "fulfillment.request_rejected",
            f"order:{request.order_id}",
            {"request_id": request_id, "note": request.outcome},
        )
        return ManualOutcome(
            "rejected", f"Request #{request_id} rejected.", request.order_id, request_id
        )


def approve_request(
    engine: Engine,
    client: StripeApi,
    actor: Actor,
    request_id: int,
    confirmation: str,
    *,
    fulfiller: Fulfiller = record_only,
) -> ManualOutcome:
    """An admin approves someone else's request: the guarded path runs with its reason."""
    _require(engine, actor, "fulfillment.approve", f"fulfillment_request:{request_id}")
    with session_scope(engine, write=False) as session:
        request = session.get(FulfillmentRequest, request_id)
        if request is not None:
            session.expunge(request)  # keep its loaded values after the read-only scope
    if request is None:
        return ManualOutcome("refused", f"There is no request #{request_id}.")
    if request.requested_by == actor.username:
        _record(
            engine,
            actor,
            "fulfillment.manual_refused",
            f"order:{request.order_id}",
            {"why": "approver is the requester", "request_id": request_id},
        )
        return ManualOutcome(
            "refused",
            "You cannot approve your own request; another admin must.",
            request.order_id,
            request_id,
        )
    if request.status != "pending":
        return ManualOutcome(
            "refused", f"Request #{request_id} is already {request.status}.", request.order_id
        )
    return _perform(
        engine,
        client,
        actor,
        request.order_id,
        request.reason,
        confirmation,
        request_id=request_id,
        fulfiller=fulfiller,
    )


def perform_manual_fulfillment(
    engine: Engine,
    client: StripeApi,
    actor: Actor,
    order_id: int,
    reason: str,
    confirmation: str,
    *,
    fulfiller: Fulfiller = record_only,
) -> ManualOutcome:
    """An admin fulfils an order by hand, with a written reason and the typed order id."""
    _require(engine, actor, "fulfillment.approve", f"order:{order_id}")
    return _perform(engine, client, actor, order_id, reason, confirmation, fulfiller=fulfiller)


def _perform(
    engine: Engine,
    client: StripeApi,
    actor: Actor,
    order_id: int,
    reason: str,
    confirmation: str,
    *,
    request_id: int | None = None,
    fulfiller: Fulfiller = record_only,
) -> ManualOutcome:
    """The guarded path, step by step: check our tables, confirm with Stripe (no transaction
    open meanwhile), fulfil under the order's row lock, close the request."""
    problem = input_problem(order_id, reason, confirmation)
    if problem:
        return ManualOutcome("refused", problem, order_id, request_id)
    order, why = _check_tables(engine, order_id)
    if why or order is None:
        return _refuse(engine, actor, order_id, why or "no such order", request_id=request_id)
    if not order.checkout_session_id:
        return _refuse(engine, actor, order_id, "no Checkout Session to check with Stripe")
    try:
        stripe_request_id = _confirm_with_stripe(client, order)
    except _NotConfirmed as refused:
        return _refuse(
            engine,
            actor,
            order_id,
            refused.why,
            request_id=request_id,
            stripe_request_id=refused.stripe_request_id,
        )
    with session_scope(engine) as session:
        done, why = _fulfil_locked(session, actor, order, reason, fulfiller)
        if request_id is not None and (done or why == "already fulfilled"):
            _close_request(session, actor, request_id, done)
        audit.record(
            session,
            actor,
            "fulfillment.manual" if done else "fulfillment.manual_refused",
            f"order:{order_id}",
            {
                "reason": reason.strip(),
                "request_id": request_id,
                "checkout_session_id": order.checkout_session_id,
                **({} if done else {"why": why}),
            },
            stripe_request_id=stripe_request_id,
        )
    if done:
        return ManualOutcome(
            "fulfilled",
            f"Order {order_id} fulfilled (Stripe confirmed the payment).",
            order_id,
            request_id,
            stripe_request_id,
        )
    result = "already_fulfilled" if why == "already fulfilled" else "refused"
    message = (
        f"Order {order_id} is already fulfilled."
        if result == "already_fulfilled"
        else f"Order {order_id} cannot be fulfilled by hand: {why}."
    )
    return ManualOutcome(result, message, order_id, request_id, stripe_request_id)


def _check_tables(engine: Engine, order_id: int) -> tuple[Order | None, str | None]:
    """The order (detached, its values loaded) and why our tables forbid fulfilling it."""
    with session_scope(engine, write=False) as session:
        order = session.get(Order, order_id)
        if order is None:
            return None, "no such order"
        why = table_problem(order, _has_fulfillment(session, order_id))
        session.expunge(order)
    return order, why


class _NotConfirmed(Exception):
    def __init__(self, why: str, stripe_request_id: str | None) -> None:
        super().__init__(why)
        self.why = why
        self.stripe_request_id = stripe_request_id


def _confirm_with_stripe(client: StripeApi, order: Order) -> str | None:
    """Stripe's live Checkout Session confirms the order as paid, unrefunded, undisputed, for
    our amount and currency; returns Stripe's request id, or raises _NotConfirmed."""
    try:
        reply = client.retrieve_checkout_session(str(order.checkout_session_id))
    except StripeProblem as exc:
        raise _NotConfirmed(
            f"Stripe could not confirm the payment ({exc.message})", exc.request_id
        ) from None
    live = stripe_problems(order, reply.data)
    if live:
        raise _NotConfirmed("; ".join(live), reply.request_id)
    return reply.request_id


def _fulfil_locked(
    session: Session, actor: Actor, confirmed: Order, reason: str, fulfiller: Fulfiller
) -> tuple[bool, str | None]:
    """Fulfil with the order row locked, if it is still what Stripe confirmed:
    (done, why not)."""
    locked = session.execute(
        select(Order).where(Order.id == confirmed.id).with_for_update()
    ).scalar_one()
    why = table_problem(locked, _has_fulfillment(session, locked.id))
    if why is None and (
        locked.amount_total != confirmed.amount_total or locked.currency != confirmed.currency
    ):
        why = "the order changed while Stripe was being asked; try again"
    if why is not None:
        return False, why
    done = fulfill(
        session,
        locked,
        source="manual",
        at=utcnow(),
        fulfiller=fulfiller,
        actor=actor.username,
        reason=reason.strip(),
    )
    return (True, None) if done else (False, "already fulfilled")


def _close_request(session: Session, actor: Actor, request_id: int, done: bool) -> None:
    """Mark the approved request done (fulfilled now, or found already fulfilled)."""
    request = session.execute(
        select(FulfillmentRequest).where(FulfillmentRequest.id == request_id).with_for_update()
    ).scalar_one()
    if request.status == "pending":
        request.status = "done"
        request.decided_by = actor.username
        request.decided_at = utcnow()
        request.outcome = "fulfilled" if done else "already fulfilled"


@dataclass(frozen=True)
class AwaitingOrder:
    id: int
    checkout_session_id: str | None
    customer_email: str | None
    amount_total: int
    currency: str | None
    paid_at: Any


def awaiting_fulfillment(session: Session, limit: int = 200) -> list[AwaitingOrder]:
    """Orders paid but not fulfilled (nor refunded or disputed), oldest payment first."""
    rows = session.execute(
        select(Order)
        .where(Order.status == "paid", Order.paid_at.is_not(None))
        .order_by(Order.paid_at)
        .limit(limit)
    ).scalars()
    return [
        AwaitingOrder(
            o.id, o.checkout_session_id, o.customer_email, o.amount_total, o.currency, o.paid_at
        )
        for o in rows
    ]


@dataclass(frozen=True)
class RequestView:
    id: int
    order_id: int
    requested_by: str
    requested_at: Any
    reason: str
    status: str
    decided_by: str | None
    outcome: str | None


def fulfillment_requests(
    session: Any, *, pending_only: bool, limit: int = 200
) -> list[RequestView]:
    """Manual-fulfillment requests, newest first."""
    query = select(FulfillmentRequest).order_by(FulfillmentRequest.id.desc()).limit(limit)
    if pending_only:
        query = query.where(FulfillmentRequest.status == "pending")
    return [
        RequestView(
            r.id,
            r.order_id,
            r.requested_by,
            r.requested_at,
            r.reason,
            r.status,
            r.decided_by,
            r.outcome,
        )
        for r in session.execute(query).scalars()
    ]
