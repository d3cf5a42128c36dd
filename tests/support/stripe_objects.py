"""Stripe-shaped objects and events for tests, built from Stripe's own examples in fixtures/.

Each builder starts from the real example and overrides only what a case is about, so that
handlers are exercised against every field Stripe actually sends."""

from __future__ import annotations

import copy
import itertools
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from core.webhook.signature import sign

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_counter = itertools.count(1)


@cache
def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def example(name: str) -> dict[str, Any]:
    """A fresh deep copy of Stripe's example object `name` (e.g. "checkout_session")."""
    return copy.deepcopy(_load(name))


def unique(prefix: str) -> str:
    return f"{prefix}_test{next(_counter):06d}{int(time.time() * 1000) % 100000:05d}"


def checkout_session(
    *,
    session_id: str | None = None,
    payment_intent: str | None = None,
    payment_status: str = "paid",
    status: str = "complete",
    amount_total: int = 2500,
    currency: str = "usd",
    email: str = "jenny.rosen@example.com",
    customer: str | None = "cus_test_jenny",
    created: int | None = None,
    promotion_code: str | None = None,
) -> dict[str, Any]:
    obj = example("checkout_session")
    obj.update(
        id=session_id or unique("cs_test"),
        payment_intent=payment_intent or unique("pi"),
        payment_status=payment_status,
        status=status,
        amount_total=amount_total,
        amount_subtotal=amount_total,
        currency=currency,
        customer=customer,
        created=created or int(time.time()) - 60,
    )
    obj["customer_details"]["email"] = email
    if promotion_code:
        obj["discounts"] = [{"coupon": None, "promotion_code": promotion_code}]
    return obj


def charge(
    *,
    charge_id: str | None = None,
    payment_intent: str | None = None,
    succeeded: bool = True,
    amount: int = 2500,
    currency: str = "usd",
    fingerprint: str = "AOB934RVNwzk6xtn",
    last4: str = "4242",
    decline_code: str = "insufficient_funds",
    amount_refunded: int = 0,
    created: int | None = None,
    client_ip: str | None = None,
    email: str | None = None,
) -> dict[str, Any]:
    obj = example("charge")
    obj.update(
        id=charge_id or unique("ch"),
        payment_intent=payment_intent,
        amount=amount,
        currency=currency,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= amount,
        created=created or int(time.time()) - 30,
        status="succeeded" if succeeded else "failed",
        paid=succeeded,
    )
    card = obj["payment_method_details"]["card"]
    card.update(fingerprint=fingerprint, last4=last4)
    obj["billing_details"]["email"] = email
    if client_ip:
        obj["metadata"] = {"client_ip": client_ip}
    if succeeded:
        obj["outcome"].update(network_status="approved_by_network", type="authorized", reason=None)
    else:
        obj.update(failure_code="card_declined", failure_message="Your card was declined.")
        obj["outcome"].update(
            network_status="declined_by_network", type="issuer_declined", reason=decline_code
        )
    return obj


def payment_intent(
    *,
    intent_id: str | None = None,
    succeeded: bool = True,
    amount: int = 2500,
    currency: str = "usd",
    charge_id: str | None = None,
    decline_code: str = "insufficient_funds",
    fingerprint: str = "AOB934RVNwzk6xtn",
    last4: str = "0341",
) -> dict[str, Any]:
    obj = example("payment_intent")
    obj.update(
        id=intent_id or unique("pi"),
        amount=amount,
        currency=currency,
        canceled_at=None,
        client_secret=None,
        status="succeeded" if succeeded else "requires_payment_method",
        latest_charge=charge_id or unique("ch"),
        amount_received=amount if succeeded else 0,
    )
    if succeeded:
        obj["last_payment_error"] = None
    else:
        method = example("payment_method")
        method["card"].update(fingerprint=fingerprint, last4=last4)
        obj["last_payment_error"] = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "charge": obj["latest_charge"],
            "message": "Your card was declined.",
            "payment_method": method,
        }
    return obj


def dispute(*, charge_id: str, payment_intent: str | None) -> dict[str, Any]:
    obj = example("dispute")
    obj.update(id=unique("dp"), charge=charge_id, payment_intent=payment_intent)
    return obj


def event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    evt = example("event")
    evt.update(
        id=event_id or unique("evt"),
        type=event_type,
        created=created or int(time.time()),
        livemode=livemode,
        api_version="2026-08-27.preview",
        data={"object": obj},
    )
    return evt


def signed(evt: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """The raw body and Stripe-Signature header Stripe would send for `evt`."""
    body = json.dumps(evt, separators=(",", ":")).encode()
    return body, sign(body, secret, timestamp)
