"""What each Stripe event does to our tables: one dict from event type to the function applying it.

Handlers run inside the webhook transaction and make no network calls. They read Stripe objects
defensively (fields may be missing, ids may be expanded objects) and raise only for events they
cannot apply, which the caller turns into a 500 so that Stripe retries. What an event could
never be applied for (core.webhook.validate) is checked before they run. Their statements are
in core.webhook.store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from core.models import Order, utcnow
from core.webhook import orders, store
from core.webhook.fulfillment import Fulfiller, fulfill, record_only
from core.webhook.validate import clean

AttemptHook = Callable[[Session, "RecordedAttempt"], None]


@dataclass(frozen=True)
class Context:
    """What handlers need besides the event; built once per process by the caller."""

    expected_livemode: bool | None = None
    fulfiller: Fulfiller = record_only
    # Called after a payment attempt is recorded (burst detection), inside the transaction.
    on_attempt: tuple[AttemptHook, ...] = ()
    clock: Callable[[], datetime] = field(default=utcnow)

    def now(self) -> datetime:
        return self.clock()


Handler = Callable[[Session, dict[str, Any], Context], None]


# --- Reading Stripe objects ---------------------------------------------------------------------


def _id(value: Any) -> str | None:
    """An id that Stripe may send as a string or as an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any, limit: int = 255) -> str | None:
    """Descriptive text, made storable (no NUL, no lone surrogate) and cut to its column."""
    return clean(value, limit) if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _time(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return fallback


def event_time(event: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(event["created"], UTC)


def _obj(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["data"]["object"])


# --- Checkout Sessions --------------------------------------------------------------------------


def _promotion_code(session_obj: dict[str, Any]) -> str | None:
    discounts = session_obj.get("discounts")
    if isinstance(discounts, list):
        for discount in discounts:
            code = _id(_dict(discount).get("promotion_code"))
            if code:
                return code
    return _str(_dict(session_obj.get("metadata")).get("promotion_code"))


@contextmanager
def _order_from_session(session: Session, event: dict[str, Any]) -> Iterator[Order]:
    obj = _obj(event)
    cs_id = _id(obj)
    if not cs_id:
        raise ValueError("checkout.session event without a session id")
    details = _dict(obj.get("customer_details"))
    email = _str(details.get("email"), 320) or _str(obj.get("customer_email"), 320)
    created = _time(obj.get("created"), event_time(event))
    intent_id = _id(obj.get("payment_intent"))
    with orders.locked_order(
        session,
        checkout_session_id=cs_id,
        payment_intent_id=intent_id,
        defaults={"created_at": created, "livemode": bool(obj.get("livemode"))},
    ) as order:
        # Descriptive fields: fill what is known, never blank out what an earlier event said.
        if email:
            order.customer_email = email
        customer = _id(obj.get("customer"))
        if customer:
            order.customer_id = customer
        if isinstance(obj.get("amount_total"), int):
            order.amount_total = obj["amount_total"]
        currency = _str(obj.get("currency"), 3)
        if currency:
            order.currency = currency.lower()
        code = _promotion_code(obj)
        if code:
            order.promotion_code = code
        order.created_at = min(order.created_at, created)
        if intent_id:
            orders.link_attempts(session, order, intent_id)
        yield order


def _pay_and_fulfil(session: Session, order: Order, event: dict[str, Any], ctx: Context) -> None:
    at = event_time(event)
    orders.mark_paid(order, at)
    orders.refresh_status(session, order, event_id=event["id"], actor=None, at=at)
    fulfill(session, order, source="webhook", at=at, fulfiller=ctx.fulfiller, event_id=event["id"])


def on_session_completed(session: Session, event: dict[str, Any], ctx: Context) -> None:
    with _order_from_session(session, event) as order:
        if _obj(event).get("payment_status") in ("paid", "no_payment_required"):
            _pay_and_fulfil(session, order, event, ctx)
        else:  # asynchronous payment methods: paid later, or failed later
            orders.refresh_status(
                session, order, event_id=event["id"], actor=None, at=event_time(event)
            )


def on_async_payment_succeeded(session: Session, event: dict[str, Any], ctx: Context) -> None:
    with _order_from_session(session, event) as order:
        _pay_and_fulfil(session, order, event, ctx)


def _set_fact(mark: Callable[[Order, datetime], None]) -> Handler:
    def handler(session: Session, event: dict[str, Any], ctx: Context) -> None:
        with _order_from_session(session, event) as order:
            at = event_time(event)
            mark(order, at)
            orders.refresh_status(session, order, event_id=event["id"], actor=None, at=at)

    return handler


# --- Payment attempts ---------------------------------------------------------------------------


def _card_fields(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "card_fingerprint": _str(card.get("fingerprint"), 64),
        "card_last4": _str(card.get("last4"), 4),
        "card_brand": _str(card.get("brand"), 32),
    }


def _charge_attempt(charge: dict[str, Any], fallback: datetime) -> dict[str, Any]:
    outcome = _dict(charge.get("outcome"))
    method = _dict(charge.get("payment_method_details"))
    billing = _dict(charge.get("billing_details"))
    metadata = _dict(charge.get("metadata"))
    decline = None
    if outcome.get("type") in ("issuer_declined", "blocked"):
        decline = _str(outcome.get("reason"), 64)
    return {
        "id": _id(charge),
        "payment_intent_id": _id(charge.get("payment_intent")),
        "customer_id": _id(charge.get("customer")),
        "email": _str(billing.get("email"), 320) or _str(charge.get("receipt_email"), 320),
        **_card_fields(_dict(method.get("card"))),
        "ip_address": _str(metadata.get("client_ip"), 64),
        "promotion_code": _str(metadata.get("promotion_code")),
        "amount": _int(charge.get("amount")),
        "currency": (_str(charge.get("currency"), 3) or "").lower() or None,
        "outcome": "succeeded" if charge.get("status") == "succeeded" else "failed",
        "failure_code": _str(charge.get("failure_code"), 64),
        "decline_code": decline,
        "network_status": _str(outcome.get("network_status"), 64),
        "failure_message": _str(charge.get("failure_message"), 1000),
        "created": _time(charge.get("created"), fallback),
    }


def _expanded_charge(intent: dict[str, Any]) -> dict[str, Any]:
    """The intent's latest charge when it is sent expanded: `latest_charge` as an object, or
    the `charges` list of API versions before 2022-11-15 (localstripe still sends both)."""
    charge = _dict(intent.get("latest_charge"))
    if charge:
        return charge
    listed = _dict(intent.get("charges")).get("data")
    return _dict(listed[-1]) if isinstance(listed, list) and listed else {}


# What an expanded charge may add to an intent's attempt (a charge event would add the same).
_FROM_CHARGE = (
    "card_fingerprint",
    "card_last4",
    "card_brand",
    "network_status",
    "failure_code",
    "decline_code",
    "failure_message",
    "email",
)


def _intent_attempt(intent: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    succeeded = event["type"] == "payment_intent.succeeded"
    error = _dict(intent.get("last_payment_error"))
    charge = _expanded_charge(intent)
    metadata = _dict(intent.get("metadata"))
    if succeeded:
        attempt_id = _id(intent.get("latest_charge")) or _id(charge) or _id(intent)
        card = _dict(_dict(charge.get("payment_method_details")).get("card"))
    else:
        attempt_id = _id(error.get("charge")) or _id(charge) or _id(intent)
        card = _dict(_dict(error.get("payment_method")).get("card"))
    values = {
        "id": attempt_id,
        "payment_intent_id": _id(intent),
        "customer_id": _id(intent.get("customer")),
        "email": _str(intent.get("receipt_email"), 320),
        **_card_fields(card),
        "ip_address": _str(metadata.get("client_ip"), 64),
        "promotion_code": _str(metadata.get("promotion_code")),
        "amount": _int(intent.get("amount")),
        "currency": (_str(intent.get("currency"), 3) or "").lower() or None,
        "outcome": "succeeded" if succeeded else "failed",
        "failure_code": None if succeeded else _str(error.get("code"), 64),
        "decline_code": None if succeeded else _str(error.get("decline_code"), 64),
        "network_status": None,
        "failure_message": None if succeeded else _str(error.get("message"), 1000),
        # The attempt happened when Stripe reported it, not when the intent was created.
        "created": event_time(event),
    }
    if charge and _id(charge) == attempt_id:
        from_charge = _charge_attempt(charge, values["created"])
        for key in _FROM_CHARGE:
            if values[key] is None:
                values[key] = from_charge[key]
    return values


@dataclass(frozen=True)
class RecordedAttempt:
    """A payment attempt as this event left it, for the hooks (burst detection).

    `moved_from` is the attempt's previous `created` when this event moved it earlier (a
    charge stamped before its PaymentIntent's event arrived later), else None."""

    id: str
    outcome: str
    created: datetime
    order_id: int | None
    card_fingerprint: str | None
    customer_id: str | None
    email: str | None
    ip_address: str | None
    promotion_code: str | None
    moved_from: datetime | None = None

    @classmethod
    def of(cls, row: dict[str, Any], moved_from: datetime | None = None) -> RecordedAttempt:
        return cls(
            id=row["id"],
            outcome=row["outcome"],
            created=row["created"],
            order_id=row["order_id"],
            card_fingerprint=row["card_fingerprint"],
            customer_id=row["customer_id"],
            email=row["email"],
            ip_address=row["ip_address"],
            promotion_code=row["promotion_code"],
            moved_from=moved_from,
        )


def _order_id(session: Session, payment_intent_id: str) -> int | None:
    orders.lock_payment_intent(session, payment_intent_id)
    return store.order_id_by_intent(session, payment_intent_id)


def record_attempt(
    session: Session, values: dict[str, Any], event: dict[str, Any], ctx: Context
) -> RecordedAttempt:
    """Insert or complete one attempt: a charge and its PaymentIntent describe the same attempt,
    each with fields the other lacks, so known values are merged and never erased."""
    attempt_id = values["id"]
    if not attempt_id:
        raise ValueError(f"{event['type']} without an object id")
    row = dict.fromkeys(store.MERGED_ATTEMPT_COLUMNS) | values
    row["event_id"] = event["id"]
    if row["payment_intent_id"]:
        row["order_id"] = _order_id(session, row["payment_intent_id"])
    moved_from = None
    if not store.insert_attempt(session, row):
        stored = store.lock_attempt(session, attempt_id)
        if stored is None:  # pragma: no cover - the insert above just found it
            raise LookupError(f"payment attempt {row['id']} vanished")
        merged = dict(stored)
        for name in store.MERGED_ATTEMPT_COLUMNS:
            if row[name] is not None and stored[name] in (None, 0):
                merged[name] = row[name]
        if row["created"] < stored["created"]:
            merged["created"], moved_from = row["created"], stored["created"]
        if merged["order_id"] is None and merged["payment_intent_id"] not in (
            None,
            row["payment_intent_id"],
        ):
            merged["order_id"] = _order_id(session, merged["payment_intent_id"])
        if merged != stored:
            store.update_attempt(session, attempt_id, merged)
        row = merged
    recorded = RecordedAttempt.of(row, moved_from)
    for hook in ctx.on_attempt:
        hook(session, recorded)
    return recorded


def on_charge(session: Session, event: dict[str, Any], ctx: Context) -> None:
    record_attempt(session, _charge_attempt(_obj(event), event_time(event)), event, ctx)


def on_payment_intent(session: Session, event: dict[str, Any], ctx: Context) -> None:
    record_attempt(session, _intent_attempt(_obj(event), event), event, ctx)


# --- Refunds and disputes -----------------------------------------------------------------------


def on_charge_refunded(session: Session, event: dict[str, Any], ctx: Context) -> None:
    charge = _obj(event)
    intent_id = _id(charge.get("payment_intent"))
    if intent_id is None:
        return  # a charge outside Checkout: nothing of ours to update
    with orders.locked_order(session, payment_intent_id=intent_id) as order:
        at = event_time(event)
        if order.amount_total == 0 and isinstance(charge.get("amount"), int):
            order.amount_total = charge["amount"]
        orders.mark_refunded(order, _int(charge.get("amount_refunded")), at)
        orders.refresh_status(session, order, event_id=event["id"], actor=None, at=at)


def on_dispute_created(session: Session, event: dict[str, Any], ctx: Context) -> None:
    dispute = _obj(event)
    intent_id = _id(dispute.get("payment_intent"))
    if intent_id is None:
        intent_id = store.attempt_intent(session, _id(dispute.get("charge")))
    if intent_id is None:
        return
    with orders.locked_order(session, payment_intent_id=intent_id) as order:
        at = event_time(event)
        orders.mark_disputed(order, at)
        orders.refresh_status(session, order, event_id=event["id"], actor=None, at=at)


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": on_session_completed,
    "checkout.session.async_payment_succeeded": on_async_payment_succeeded,
    "checkout.session.async_payment_failed": _set_fact(orders.mark_failed),
    "checkout.session.expired": _set_fact(orders.mark_expired),
    "payment_intent.succeeded": on_payment_intent,
    "payment_intent.payment_failed": on_payment_intent,
    "charge.succeeded": on_charge,
    "charge.failed": on_charge,
    "charge.refunded": on_charge_refunded,
    "charge.dispute.created": on_dispute_created,
}
