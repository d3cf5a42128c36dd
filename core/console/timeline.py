"""An order's timeline for support: one entry per thing that happened, in sentences, oldest first.

Entries are business events: the checkout starting, each payment attempt (its outcome and the
decline reason in Stripe's words), changes of status, refunds with their amounts, the dispute
(reason, amount, respond-by date), the fulfillment, requests for a manual one and operator
actions. The Stripe events and webhook deliveries behind an entry are folded under it as
technical detail, with each event's raw payload (the dashboard keeps payloads for admins).
A Stripe event that explains no entry (an ignored or failed one) gets an entry of its own.

`order_timeline` reads the rows once (`_load`), then one helper per kind of entry builds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.console.declines import decline_label, dispute_reason_label
from core.console.orders import (
    DISPUTE_EVENTS,
    attempt_filter,
    dispute_of,
    order_target,
    payload_object,
    refunds_from_events,
    related_event_ids,
)
from core.models import (
    AuditEntry,
    Fulfillment,
    FulfillmentRequest,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
)
from core.money import format_minor

TimelineKind = Literal[
    "created", "payment", "status", "fulfillment", "refund", "dispute", "request", "action", "event"
]
# Within one second, the order things happen in.
KIND_ORDER: dict[str, int] = {
    kind: rank
    for rank, kind in enumerate(
        ("created", "payment", "status", "fulfillment", "refund", "dispute", "request", "action")
    )
} | {"event": 99}
TIME_FORMAT = "%Y-%m-%d %H:%M UTC"


@dataclass(frozen=True)
class Delivery:
    """One HTTP delivery of a Stripe event to our webhook endpoint."""

    received_at: datetime
    outcome: str
    http_status: int
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class EventDetail:
    """A Stripe event behind an entry: what the technical fold shows."""

    event_id: str
    type: str
    created: datetime
    status: str
    source: str
    processed_at: datetime | None
    last_error: str | None
    deliveries: tuple[Delivery, ...]
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: TimelineKind
    title: str  # one sentence: what happened
    facts: dict[str, str]  # what support reads under the title, label -> value
    technical: dict[str, str]  # ids and codes, folded away
    events: tuple[EventDetail, ...] = ()
    good: bool | None = None  # True: money in or goods out; False: a failure; None: neither


def when(at: datetime | None) -> str:
    """A time as the console shows it: UTC, with the zone named."""
    return "–" if at is None else f"{at:{TIME_FORMAT}}"


@dataclass(frozen=True)
class _Records:
    """Everything recorded about one order, read once."""

    order: Order
    attempts: tuple[PaymentAttempt, ...]
    transitions: tuple[OrderTransition, ...]
    fulfillment: Fulfillment | None
    requests: tuple[FulfillmentRequest, ...]
    event_rows: tuple[StripeEvent, ...]
    events: dict[str, EventDetail]
    actions: tuple[AuditEntry, ...]

    def money(self, amount: int | None, currency: str | None = None) -> str:
        return format_minor(int(amount or 0), currency or self.order.currency)

    def events_named(self, ids: Iterable[str | None]) -> tuple[EventDetail, ...]:
        found = {self.events[i].event_id: self.events[i] for i in ids if i and i in self.events}
        return tuple(sorted(found.values(), key=lambda e: (e.created, e.event_id)))


def order_timeline(session: Session, order_id: int) -> list[TimelineEntry]:
    """Everything that happened to one order, oldest first (see the module docstring)."""
    order = session.get(Order, order_id)
    if order is None:
        return []
    records = _load(session, order)
    entries = [
        _created_entry(records),
        *_payment_entries(records),
        *_status_entries(records),
        *_fulfillment_entries(records),
        *_refund_entries(records),
        *_dispute_entries(records),
        *_request_entries(records),
        *_action_entries(records),
    ]
    entries += _unexplained_event_entries(records, entries)
    entries.sort(key=lambda e: (e.at, KIND_ORDER[e.kind]))
    return entries


# --- Reading ------------------------------------------------------------------------------------


def _load(session: Session, order: Order) -> _Records:
    attempts = tuple(session.scalars(select(PaymentAttempt).where(attempt_filter(order))).all())
    transitions = tuple(
        session.scalars(
            select(OrderTransition)
            .where(OrderTransition.order_id == order.id)
            .order_by(OrderTransition.at, OrderTransition.id)
        ).all()
    )
    ids = related_event_ids(session, order, attempts=attempts, transitions=transitions)
    event_rows = tuple(
        session.scalars(select(StripeEvent).where(StripeEvent.id.in_(select(ids.c.id)))).all()
    )
    deliveries: dict[str, list[Delivery]] = {}
    if event_rows:
        for row in session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_([e.id for e in event_rows]))
            .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        ):
            deliveries.setdefault(row.event_id or "", []).append(
                Delivery(row.received_at, row.outcome, row.http_status, row.error, row.duration_ms)
            )
    events = {
        row.id: EventDetail(
            row.id,
            row.type,
            row.created,
            row.status,
            row.source,
            row.processed_at,
            row.last_error,
            tuple(deliveries.get(row.id, ())),
            row.payload if isinstance(row.payload, dict) else None,
        )
        for row in event_rows
    }
    # Operator actions name the order, its session or intent, or one of its events (replays).
    targets = [order_target(order.id), *events]
    targets += [t for t in (order.checkout_session_id, order.payment_intent_id) if t]
    return _Records(
        order=order,
        attempts=attempts,
        transitions=transitions,
        fulfillment=session.scalars(
            select(Fulfillment).where(Fulfillment.order_id == order.id)
        ).first(),
        requests=tuple(
            session.scalars(
                select(FulfillmentRequest).where(FulfillmentRequest.order_id == order.id)
            ).all()
        ),
        event_rows=event_rows,
        events=events,
        actions=tuple(
            session.scalars(
                select(AuditEntry).where(AuditEntry.target.in_(targets)).order_by(AuditEntry.id)
            ).all()
        ),
    )


# --- One helper per kind of entry ---------------------------------------------------------------


def _created_entry(records: _Records) -> TimelineEntry:
    order = records.order
    return TimelineEntry(
        order.created_at,
        "created",
        f"Checkout started for {records.money(order.amount_total)}",
        _present({"Customer email": order.customer_email, "Promotion code": order.promotion_code}),
        _present(
            {
                "Order": f"#{order.id}",
                "Checkout Session": order.checkout_session_id,
                "PaymentIntent": order.payment_intent_id,
                "Customer": order.customer_id,
                "Mode": "live" if order.livemode else "test",
            }
        ),
    )


def _attempt_event_ids(records: _Records, attempt: PaymentAttempt) -> Iterator[str]:
    """The events that reported one attempt: the one that wrote it, those about its charge,
    and PaymentIntent events whose error or latest charge is this attempt."""
    yield from (attempt.event_id,) if attempt.event_id else ()
    for event in records.event_rows:
        if event.object_id == attempt.id:
            yield event.id
        elif event.type.startswith("payment_intent.") and event.object_id == (
            attempt.payment_intent_id
        ):
            intent = payload_object(event)
            error = intent.get("last_payment_error")
            named = {_id(intent.get("latest_charge"))}
            if isinstance(error, dict):
                named.add(_id(error.get("charge")))
            if attempt.id in named:
                yield event.id


def _payment_entries(records: _Records) -> Iterator[TimelineEntry]:
    for attempt in sorted(records.attempts, key=lambda a: (a.created, a.id)):
        amount = records.money(attempt.amount, attempt.currency)
        card = " ".join(part for part in (attempt.card_brand, f"···· {attempt.card_last4}") if part)
        if attempt.outcome == "succeeded":
            title, good = f"Payment of {amount} succeeded", True
        else:
            reason = decline_label(attempt.decline_code or attempt.failure_code)
            title = f"Payment of {amount} declined: {reason or 'no reason given'}"
            good = False
        yield TimelineEntry(
            attempt.created,
            "payment",
            title,
            _present(
                {
                    "Card": card if attempt.card_last4 else attempt.card_brand,
                    "Bank's answer": _words(attempt.network_status),
                    "Stripe's message": attempt.failure_message,
                }
            ),
            _present(
                {
                    "Attempt": attempt.id,
                    "PaymentIntent": attempt.payment_intent_id,
                    "Failure code": attempt.failure_code,
                    "Decline code": attempt.decline_code,
                    "Card fingerprint": attempt.card_fingerprint,
                    "IP address": attempt.ip_address,
                }
            ),
            records.events_named(_attempt_event_ids(records, attempt)),
            good,
        )


STATUS_SENTENCES = {
    "paid": "Paid {amount}",
    "fulfilled": "Fulfilled",
    "failed": "The payment failed; the order is closed as failed",
    "expired": "The Checkout Session expired unpaid",
    "refunded": "Refunded in full",
    "partially_refunded": "Partially refunded",
    "disputed": "Disputed by the customer",
}


def _status_entries(records: _Records) -> Iterator[TimelineEntry]:
    """Changes of status that no richer entry tells: a refund, dispute or fulfillment entry
    already says that the status moved, with its amounts and reasons."""
    told = {"fulfilled"} if records.fulfillment is not None else set()
    if any(e.type.startswith("charge.refund") for e in records.event_rows):
        told |= {"refunded", "partially_refunded"}
    if any(e.type in DISPUTE_EVENTS for e in records.event_rows):
        told.add("disputed")
    for tr in records.transitions:
        if tr.to_status in told:
            continue
        sentence = STATUS_SENTENCES.get(tr.to_status, "Status changed to {status}")
        title = sentence.format(
            amount=records.money(records.order.amount_total), status=_words(tr.to_status)
        )
        yield TimelineEntry(
            tr.at,
            "status",
            f"{title} (by {tr.actor})" if tr.actor else title,
            {"Status": f"{_words(tr.from_status)} → {_words(tr.to_status)}"},
            {},
            records.events_named([tr.event_id]),
            {"paid": True, "failed": False, "expired": False}.get(tr.to_status),
        )


FULFILLMENT_SENTENCES = {
    "webhook": "Fulfilled automatically once the payment arrived",
    "manual": "Fulfilled by hand by {actor}",
    "reconcile": "Fulfilled by reconciliation with Stripe",
}


def _fulfillment_entries(records: _Records) -> Iterator[TimelineEntry]:
    done = records.fulfillment
    if done is None:
        return
    sentence = FULFILLMENT_SENTENCES.get(done.source, "Fulfilled ({source})")
    yield TimelineEntry(
        done.fulfilled_at,
        "fulfillment",
        sentence.format(actor=done.actor or "an operator", source=done.source),
        _present({"Reason": done.reason}),
        {"Source": done.source},
        records.events_named([done.event_id]),
        True,
    )


def _refund_entries(records: _Records) -> Iterator[TimelineEntry]:
    total = records.order.amount_total
    so_far = 0
    for refund in refunds_from_events(records.event_rows):
        so_far += refund.amount
        amount = records.money(refund.amount, refund.currency)
        share = f"{records.money(so_far)} of {records.money(total)}"
        if total and so_far >= total:
            in_full = so_far == refund.amount
            title = f"Refunded {amount} " + ("(in full)" if in_full else f"(now in full: {share})")
        else:
            title = f"Refunded {amount} ({share} refunded so far)"
        yield TimelineEntry(
            refund.at,
            "refund",
            title,
            _present({"Reason": _words(refund.reason)}),
            _present({"Refund": refund.refund_id}),
            records.events_named([refund.event_id]),
        )


def _dispute_entries(records: _Records) -> Iterator[TimelineEntry]:
    for event in sorted(records.event_rows, key=lambda e: (e.created, e.id)):
        if event.type not in DISPUTE_EVENTS:
            continue
        dispute = dispute_of(event)
        amount = (
            records.money(dispute.amount, dispute.currency) if dispute.amount is not None else None
        )
        if event.type == "charge.dispute.created":
            title = "The customer disputed the payment" + (f" ({amount})" if amount else "")
        elif event.type == "charge.dispute.closed":
            title = f"The dispute closed: {_words(dispute.status) or 'no outcome given'}"
        else:
            title = f"The dispute was updated: {_words(dispute.status) or 'no status given'}"
        yield TimelineEntry(
            event.created,
            "dispute",
            title,
            _present(
                {
                    "Reason": dispute_reason_label(dispute.reason),
                    "Amount": amount,
                    "Respond by": when(dispute.respond_by) if dispute.respond_by else None,
                }
            ),
            _present({"Dispute": dispute.dispute_id, "Status": dispute.status}),
            records.events_named([event.id]),
            False,
        )


def _request_entries(records: _Records) -> Iterator[TimelineEntry]:
    """A request says what was asked when it was asked; its decision is an entry of its own
    (the request's current status belongs to the decision, not to the moment it was made)."""
    for req in records.requests:
        yield TimelineEntry(
            req.requested_at,
            "request",
            f"{req.requested_by} asked for a manual fulfillment (request #{req.id})",
            {"Reason": req.reason},
            {"Request": f"#{req.id}"},
        )
        if req.decided_at is None:
            continue
        verb = "rejected" if req.status == "rejected" else "approved"
        yield TimelineEntry(
            req.decided_at,
            "request",
            f"{req.decided_by or 'An operator'} {verb} manual fulfillment request #{req.id}",
            _present({"Note" if verb == "rejected" else "Outcome": req.outcome}),
            {"Request": f"#{req.id}"},
            good=False if verb == "rejected" else None,
        )


ACTION_SENTENCES = {
    "fulfillment.request": "{actor} asked for a manual fulfillment",
    "fulfillment.requested": "{actor} asked for a manual fulfillment",
    "fulfillment.manual": "{actor} fulfilled the order by hand",
    "fulfillment.manual_refused": "{actor} tried to fulfil the order by hand; it was refused",
    "fulfillment.request_rejected": "{actor} rejected a manual fulfillment request",
    "events.replay": "{actor} replayed a Stripe event",
    "events.replay_dry_run": "{actor} tried a replay of a Stripe event (dry run)",
    "events.reconcile": "{actor} reconciled the order with Stripe",
    "permission_denied": "{actor} tried an action their role does not allow",
}


def _action_entries(records: _Records) -> Iterator[TimelineEntry]:
    """Operator actions, in sentences. Requests and fulfillments already have their own entries
    (from their tables), so the audit rows that only repeat them are left out."""
    request_ids = {req.id for req in records.requests}
    manual = records.fulfillment is not None and records.fulfillment.source == "manual"
    for entry in records.actions:
        details = entry.details if isinstance(entry.details, dict) else {}
        if entry.action in ("fulfillment.requested", "fulfillment.request_rejected") and (
            details.get("request_id") in request_ids
        ):
            continue
        if entry.action == "fulfillment.manual" and manual:
            continue
        actor = f"{entry.actor} ({entry.role})" if entry.role else entry.actor
        sentence = ACTION_SENTENCES.get(entry.action, "{actor} did " + entry.action)
        yield TimelineEntry(
            entry.at,
            "action",
            sentence.format(actor=actor),
            {_label(key): _readable(value) for key, value in details.items() if _shown(value)},
            _present(
                {
                    "Action": entry.action,
                    "Target": entry.target,
                    "Stripe request": entry.stripe_request_id,
                }
            ),
            good=False if entry.action.endswith(("_refused", "_denied")) else None,
        )


EVENT_STATUS_WORDS = {
    "processed": "processed",
    "ignored": "recorded, nothing to do",
    "failed": "could not be processed",
}


def _unexplained_event_entries(
    records: _Records, entries: list[TimelineEntry]
) -> list[TimelineEntry]:
    """A Stripe event no entry explains (e.g. one that failed, or one of a type we ignore)."""
    shown = {event.event_id for entry in entries for event in entry.events}
    return [
        TimelineEntry(
            event.created,
            "event",
            f"Stripe sent {event.type}: {EVENT_STATUS_WORDS.get(event.status, event.status)}",
            _present({"Error": event.last_error}),
            {},
            (event,),
            False if event.status == "failed" else None,
        )
        for event in records.events.values()
        if event.event_id not in shown
    ]


# --- Words ----------------------------------------------------------------------------------------


def _present(values: Mapping[str, str | None]) -> dict[str, str]:
    """The pairs that have a value: an empty fact is left out, not shown as "None"."""
    return {key: value for key, value in values.items() if value}


def _words(code: str | None) -> str | None:
    return code.replace("_", " ") if code else None


def _id(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _label(key: object) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _shown(value: object) -> bool:
    return value is not None and value != "" and value != {} and value != []


def _readable(value: object) -> str:
    """An audit detail as a person reads it: no Python dict or list syntax."""
    if isinstance(value, Mapping):
        return "; ".join(f"{_label(k)}: {_readable(v)}" for k, v in value.items() if _shown(v))
    if isinstance(value, list | tuple):
        return ", ".join(_readable(item) for item in value if _shown(item))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return when(value)
    return str(value)
