"""Realistic demo data, recorded through the real webhook path.

`plan` is pure: from a seed it builds about 90 days of a shop's Stripe traffic as signed
webhook deliveries (Checkout Sessions completed or expired, charges succeeded and failed with
a realistic mix of decline codes, refunds, disputes), with the trouble an operations console
exists for: deliveries repeated by Stripe, a secret rotation that briefly broke signatures,
scanners probing the endpoint, a fulfilment service that went down for a while (and orders it
never managed to fulfil), and a few attacks spread over the period: card testing from one IP,
an account attack (many cards tried on one customer account), a promotion-code abuse and a
card retried again and again.

Ordinary shoppers succeed on about 88% of attempts (Stripe reports 85 to 95% per attempt for
card payments); attacks are mostly declined, so a period with an attack reads a little lower.

`run` plays the deliveries in time order through the receiver's own group commit
(`core.webhook.receive.receive_many`: verification, the event row, the handler, the delivery
row, many deliveries per transaction, each event in its own savepoint) with the deployment's
own handler context, each delivery received at its planned time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.models import Order, PaymentAttempt, StripeEvent
from core.risk.batch import detect_period
from core.risk.detector import Rules
from core.webhook import receive
from core.webhook.fulfillment import FulfillmentDeferred
from core.webhook.handlers import Context
from core.webhook.signature import sign

API_VERSION = "2025-09-30.clover"
# Every demo object id carries this marker after its Stripe prefix: `--once` looks for it.
MARKER = "1Demo"
DEMO_EVENT_PREFIX = f"evt_{MARKER}"
DEMO_SECRET = "whsec_demo_local_only_not_a_real_secret"  # noqa: S105 - public demo value
# The secret Stripe signed with during the simulated rotation incident (never configured).
ROTATED_SECRET = "whsec_demo_rotated_before_config_was_updated"  # noqa: S105

# Promotion code ids (Stripe's promo_...) -> percent off. The Stripe stand-in derives the same
# codes from the orders that used them (code text = id without "promo_", upper case) and gives
# the n-th code in id order the n-th percentage of (10, 15, 20, 25, 50): keep this in that order.
PROMOTION_CODES: dict[str, int] = {
    "promo_autumn": 10,
    "promo_friends": 15,
    "promo_newsletter": 20,
    "promo_spring": 25,
    "promo_welcome": 50,
}

CURRENCIES: dict[str, tuple[float, tuple[int, ...]]] = {
    # currency: (share of orders, prices in minor units; jpy has no minor unit)
    "usd": (0.55, (900, 1500, 2900, 4900, 9900, 19900)),
    "eur": (0.25, (900, 1500, 2900, 4900, 9900, 19900)),
    "gbp": (0.12, (800, 1200, 2500, 3900, 7900, 15900)),
    "jpy": (0.08, (1200, 2400, 4800, 9800, 19800)),
}

# Stripe decline codes with rough real-world frequencies, and the charge's failure_code.
DECLINES: dict[str, tuple[float, str]] = {
    "generic_decline": (0.27, "card_declined"),
    "insufficient_funds": (0.24, "card_declined"),
    "do_not_honor": (0.10, "card_declined"),
    "incorrect_cvc": (0.08, "incorrect_cvc"),
    "expired_card": (0.06, "expired_card"),
    "card_velocity_exceeded": (0.04, "card_declined"),
    "incorrect_number": (0.04, "incorrect_number"),
    "fraudulent": (0.04, "card_declined"),
    "authentication_required": (0.03, "card_declined"),
    "processing_error": (0.03, "processing_error"),
    "transaction_not_allowed": (0.02, "card_declined"),
    "try_again_later": (0.02, "card_declined"),
    "lost_card": (0.01, "card_declined"),
    "stolen_card": (0.01, "card_declined"),
}
DECLINE_MESSAGES = {
    "incorrect_cvc": "Your card's security code is incorrect.",
    "expired_card": "Your card has expired.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "insufficient_funds": "Your card has insufficient funds.",
}
BRANDS = (("visa", 0.55), ("mastercard", 0.30), ("amex", 0.10), ("discover", 0.05))
STRIPE_IPS = ("3.18.12.63", "3.130.192.231", "13.235.14.237", "18.211.135.69", "35.154.171.200")
FIRST_NAMES = (
    "jenny",
    "alex",
    "sam",
    "maria",
    "li",
    "noah",
    "emma",
    "omar",
    "chloe",
    "lucas",
    "aiko",
    "pedro",
    "sofia",
    "ivan",
    "zoe",
    "ravi",
    "hannah",
    "tom",
    "nina",
    "yusuf",
)
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "shop.example")

PAID_SHARE = 0.76  # the rest of the sessions are abandoned and expire after 24 hours
# Declined attempts before paying: most shoppers pay at the first try (~88% per attempt).
PAID_FAILURES = {0: 93.0, 1: 5.0, 2: 1.5, 3: 0.5}
ABANDONED_WITH_ATTEMPTS = 0.12  # most abandoned sessions never reach a payment attempt
REFUND_SHARE = 0.035  # of paid orders: a few percent, as for most online shops
DISPUTE_SHARE = 0.003  # well under the card networks' 0.9% monitoring threshold
DUPLICATE_SHARE = 0.025  # deliveries Stripe repeats (it did not see our answer in time)
POISON_SHARE = 0.0012  # paid orders the fulfilment service keeps refusing
RETRY_DELAYS = (timedelta(minutes=5), timedelta(minutes=35), timedelta(hours=2), timedelta(hours=7))
# Attacks in a full demo (about 220 sessions a day); smaller demos get smaller attacks.
ATTACK_TRAFFIC = 200  # sessions a day at which attacks have their full size
ABUSED_PROMOTION_CODE = "promo_welcome"  # the 50% code leaked on a coupon forum


class FulfilmentUnavailable(Exception):
    """The (simulated) fulfilment service refused or did not answer."""


# --- Identifiers and Stripe-shaped objects -------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits


class Ids:
    """Stripe-looking ids, unique and deterministic for the seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

    def __call__(self, prefix: str) -> str:
        self.counter += 1
        tail = "".join(self.rng.choices(_ALNUM, k=10))
        return f"{prefix}_{MARKER}{self.counter:07d}{tail}"


def _ts(value: datetime) -> int:
    return int(value.timestamp())


@dataclass
class Customer:
    id: str
    email: str
    name: str
    ip: str
    cards: list[dict[str, Any]]


def _card(rng: random.Random, ids: Ids) -> dict[str, Any]:
    brand = rng.choices([b for b, _ in BRANDS], [w for _, w in BRANDS])[0]
    return {
        "brand": brand,
        "last4": f"{rng.randrange(10000):04d}",
        "fingerprint": "".join(rng.choices(_ALNUM, k=16)),
        "exp_month": rng.randint(1, 12),
        "exp_year": rng.randint(2026, 2032),
        "country": rng.choice(("US", "US", "GB", "DE", "FR", "JP", "NL")),
        "funding": rng.choice(("credit", "credit", "debit", "prepaid")),
        "network": brand,
        "payment_method": ids("pm"),
    }


def _ip(rng: random.Random) -> str:
    first = rng.choice((24, 31, 45, 62, 81, 92, 103, 151, 176, 203))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def checkout_session(
    cs: str,
    pi: str,
    customer: Customer,
    amount: int,
    subtotal: int,
    currency: str,
    created: datetime,
    promo: str | None,
    *,
    paid: bool,
    expired: bool = False,
) -> dict[str, Any]:
    return {
        "id": cs,
        "object": "checkout.session",
        "amount_subtotal": subtotal,
        "amount_total": amount,
        "currency": currency,
        "customer": customer.id,
        "customer_details": {
            "email": customer.email,
            "name": customer.name,
            "address": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "created": _ts(created),
        "expires_at": _ts(created + timedelta(hours=24)),
        "livemode": False,
        "metadata": {"client_ip": customer.ip},
        "mode": "payment",
        "payment_intent": pi,
        "payment_method_types": ["card"],
        "payment_status": "paid" if paid else "unpaid",
        "status": "expired" if expired else ("complete" if paid else "open"),
        "discounts": [{"coupon": None, "promotion_code": promo}] if promo else [],
        "success_url": "https://shop.example/thanks?session_id={CHECKOUT_SESSION_ID}",
        "total_details": {
            "amount_discount": subtotal - amount,
            "amount_shipping": 0,
            "amount_tax": 0,
        },
        "url": None,
    }


def charge(
    ch: str,
    pi: str,
    customer: Customer,
    card: dict[str, Any],
    amount: int,
    currency: str,
    created: datetime,
    promo: str | None,
    decline: str | None,
    *,
    refunded: int = 0,
    ip: str | None = None,
) -> dict[str, Any]:
    succeeded = decline is None
    failure_code = DECLINES[decline][1] if decline else None
    outcome: dict[str, Any]
    if succeeded:
        outcome = {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    else:
        blocked = decline == "fraudulent"
        outcome = {
            "network_status": "not_sent_to_network" if blocked else "declined_by_network",
            "reason": decline,
            "risk_level": "highest" if blocked else "normal",
            "seller_message": "The bank did not return any further details with this decline.",
            "type": "blocked" if blocked else "issuer_declined",
        }
    metadata = {"client_ip": ip or customer.ip}
    if promo:
        metadata["promotion_code"] = promo
    card_details = {k: v for k, v in card.items() if k != "payment_method"}
    return {
        "id": ch,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": refunded,
        "billing_details": {
            "email": customer.email,
            "name": customer.name,
            "address": None,
            "phone": None,
        },
        "captured": succeeded,
        "created": _ts(created),
        "currency": currency,
        "customer": customer.id,
        "failure_code": failure_code,
        "failure_message": DECLINE_MESSAGES.get(decline or "", "Your card was declined.")
        if decline
        else None,
        "livemode": False,
        "metadata": metadata,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": pi,
        "payment_method": card["payment_method"],
        "payment_method_details": {"type": "card", "card": card_details},
        "receipt_email": customer.email,
        "refunded": succeeded and refunded >= amount,
        "status": "succeeded" if succeeded else "failed",
    }


def dispute(
    dp: str, ch: str, pi: str, amount: int, currency: str, created: datetime, reason: str
) -> dict[str, Any]:
    return {
        "id": dp,
        "object": "dispute",
        "amount": amount,
        "charge": ch,
        "created": _ts(created),
        "currency": currency,
        "livemode": False,
        "payment_intent": pi,
        "reason": reason,
        "status": "needs_response",
        "is_charge_refundable": False,
        "evidence_details": {
            "due_by": _ts(created + timedelta(days=7)),
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
    }


# --- The plan ----------------------------------------------------------------------------------


@dataclass(order=True)
class Delivery:
    """One HTTP request to the webhook endpoint, as Stripe (or a stranger) would send it."""

    at: datetime
    seq: int
    event: dict[str, Any] | None = field(compare=False, default=None)
    # None: a correct delivery; else how the request is wrong.
    fault: str | None = field(compare=False, default=None)
    remote_addr: str = field(compare=False, default=STRIPE_IPS[0])


@dataclass(frozen=True)
class Incidents:
    """The trouble in the plan: when fulfilment was down, which orders it never fulfils, when
    Stripe signed with a secret we did not have yet."""

    outages: tuple[tuple[datetime, datetime], ...]
    poison_sessions: frozenset[str]
    rotation: tuple[datetime, datetime]

    def fulfilment_fails(self, checkout_session_id: str | None, at: datetime) -> bool:
        if checkout_session_id in self.poison_sessions:
            return True
        return any(start <= at < end for start, end in self.outages)


@dataclass
class Plan:
    deliveries: list[Delivery]
    incidents: Incidents
    sessions: int
    attempts: int


class _Planner:
    def __init__(self, days: int, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.ids = Ids(self.rng)
        self.now = now
        self.start = now - timedelta(days=days)
        self.days = days
        self.deliveries: list[Delivery] = []
        self.attempts = 0
        self.rotation = (self._at_fraction(0.58), self._at_fraction(0.58) + timedelta(hours=2))
        self.outages = (
            (self._at_fraction(0.27), self._at_fraction(0.27) + timedelta(minutes=50)),
            (self._at_fraction(0.71), self._at_fraction(0.71) + timedelta(minutes=90)),
        )
        self.poison: set[str] = set()

    def _at_fraction(self, fraction: float) -> datetime:
        return (self.start + (self.now - self.start) * fraction).replace(
            minute=0, second=0, microsecond=0
        )

    # Events and their deliveries

    def event(self, event_type: str, obj: dict[str, Any], created: datetime) -> None:
        if created >= self.now:
            return  # has not happened yet
        evt = {
            "id": self.ids("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": _ts(created),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        rng = self.rng
        lag = timedelta(seconds=min(600.0, rng.lognormvariate(-0.3, 0.9)))
        at = created + lag
        self._deliver(at, evt)

    def _deliver(self, at: datetime, evt: dict[str, Any], fault: str | None = None) -> None:
        if at >= self.now:
            return
        rng = self.rng
        rotation_start, rotation_end = self.rotation
        if fault is None and rotation_start <= at < rotation_end:
            # Signed with a secret we did not know yet: rejected; Stripe retries after the fix.
            self._add(at, evt, "rotated_secret")
            self._deliver(rotation_end + timedelta(minutes=rng.uniform(5, 60)), evt)
            return
        self._add(at, evt, fault)
        if fault is None and rng.random() < DUPLICATE_SHARE:
            self._add(at + timedelta(seconds=rng.uniform(1, 90)), evt, None)
        if evt["type"] in ("checkout.session.completed",):
            cs = evt["data"]["object"]["id"]
            if cs in self.poison or any(s <= at < e for s, e in self.outages):
                for delay in RETRY_DELAYS:  # Stripe retries with backoff until it gets a 2xx
                    self._add(at + delay, evt, None)
                    retry = at + delay
                    if cs not in self.poison and not any(s <= retry < e for s, e in self.outages):
                        break

    def _add(self, at: datetime, evt: dict[str, Any] | None, fault: str | None) -> None:
        if at >= self.now:
            return
        self.deliveries.append(
            Delivery(at, len(self.deliveries), evt, fault, self.rng.choice(STRIPE_IPS))
        )

    # Shoppers

    def customers(self, count: int) -> list[Customer]:
        rng = self.rng
        people = []
        for _ in range(count):
            first = rng.choice(FIRST_NAMES)
            last = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 8)))
            email = f"{first}.{last}{rng.randrange(100)}@{rng.choice(DOMAINS)}"
            if rng.random() < 0.08:  # people type their email in all sorts of ways
                email = email.capitalize()
            cards = [_card(rng, self.ids) for _ in range(1 if rng.random() < 0.7 else 2)]
            people.append(
                Customer(self.ids("cus"), email, f"{first.title()} {last.title()}", _ip(rng), cards)
            )
        return people

    def session_time(self) -> datetime:
        """A time in the window, busier in the evening and on weekends, growing slowly."""
        rng = self.rng
        while True:
            fraction: float = rng.random() ** 0.85  # more recent days a little busier
            at = self.start + (self.now - self.start) * fraction
            weight = 0.35 + 0.65 * math.sin(math.pi * ((at.hour - 6) % 24) / 24) ** 2
            if at.weekday() >= 5:
                weight *= 1.2
            if rng.random() < weight / 1.2:
                return at

    def decline(self) -> str:
        codes = list(DECLINES)
        return self.rng.choices(codes, [DECLINES[c][0] for c in codes])[0]

    def checkout(self, customer: Customer, role: str | None = None) -> None:
        """One Checkout Session. `role` forces a story: "poison" (paid, never fulfilled),
        "outage" (paid while fulfilment is down), "refund", "dispute"."""
        rng = self.rng
        currency = rng.choices(list(CURRENCIES), [c[0] for c in CURRENCIES.values()])[0]
        subtotal = rng.choice(CURRENCIES[currency][1]) * rng.choice((1, 1, 1, 2, 3))
        promo = rng.choice(list(PROMOTION_CODES)) if rng.random() < 0.14 else None
        amount = subtotal * (100 - PROMOTION_CODES[promo]) // 100 if promo else subtotal
        created = self.session_time()
        cs, pi = self.ids("cs_test"), self.ids("pi")
        paid = role is not None or rng.random() < PAID_SHARE
        # Failed attempts before paying (or giving up): retries spaced so that an ordinary
        # customer stays under the burst rules (at most 3 failures in an hour).
        if paid:
            failures = rng.choices(list(PAID_FAILURES), list(PAID_FAILURES.values()))[0]
        else:
            failures = rng.choice((1, 1, 1, 2)) if rng.random() < ABANDONED_WITH_ATTEMPTS else 0
        if promo:
            # Hundreds of shoppers share a code: ordinary retries on it would look like a burst
            # on the code every hour. Keep the risk queue to real stories.
            failures = min(failures, 1)
        if role == "outage":  # pays at once, while the fulfilment service is down
            start, end = rng.choice(self.outages)
            created = start + (end - start) * rng.uniform(0.0, 0.6) - timedelta(minutes=1)
            failures = 0
        elif role == "poison":
            self.poison.add(cs)
        t = created + timedelta(seconds=rng.uniform(20, 300))
        recent: list[datetime] = []
        card = customer.cards[0]
        for _ in range(failures):
            if len(recent) >= 3:
                t = max(t, recent[-3] + timedelta(minutes=rng.uniform(61, 240)))
            if t >= created + timedelta(hours=23):
                break
            if len(customer.cards) > 1 and rng.random() < 0.4:
                card = rng.choice(customer.cards)
            self._attempt(pi, customer, card, amount, currency, t, promo, self.decline())
            recent.append(t)
            t += timedelta(minutes=rng.lognormvariate(1.5, 1.0))
        if paid and t < created + timedelta(hours=23):
            ch = self._attempt(pi, customer, card, amount, currency, t, promo, None)
            done = t + timedelta(seconds=rng.uniform(1, 4))
            self.event(
                "checkout.session.completed",
                checkout_session(
                    cs, pi, customer, amount, subtotal, currency, created, promo, paid=True
                ),
                done,
            )
            self._after_payment(ch, pi, customer, card, amount, currency, t, promo, role)
        else:
            self.event(
                "checkout.session.expired",
                checkout_session(
                    cs,
                    pi,
                    customer,
                    amount,
                    subtotal,
                    currency,
                    created,
                    promo,
                    paid=False,
                    expired=True,
                ),
                created + timedelta(hours=24),
            )

    def _attempt(
        self,
        pi: str,
        customer: Customer,
        card: dict[str, Any],
        amount: int,
        currency: str,
        at: datetime,
        promo: str | None,
        decline: str | None,
        ip: str | None = None,
    ) -> str:
        ch = self.ids("ch")
        obj = charge(ch, pi, customer, card, amount, currency, at, promo, decline, ip=ip)
        if at < self.now:
            self.attempts += 1
        self.event("charge.succeeded" if decline is None else "charge.failed", obj, at)
        return ch

    def _after_payment(
        self,
        ch: str,
        pi: str,
        customer: Customer,
        card: dict[str, Any],
        amount: int,
        currency: str,
        paid_at: datetime,
        promo: str | None,
        role: str | None,
    ) -> None:
        rng = self.rng
        roll = rng.random()
        if role == "refund":
            roll = 0.0
        elif role == "dispute":
            roll = REFUND_SHARE
        if roll < REFUND_SHARE:
            refunded = amount if rng.random() < 0.7 else max(1, amount * rng.randint(1, 5) // 10)
            when = paid_at + timedelta(days=rng.uniform(0.2, 20))
            if role is not None and when >= self.now:  # a forced story must happen
                when = paid_at + (self.now - paid_at) * rng.uniform(0.2, 0.9)
            obj = charge(
                ch, pi, customer, card, amount, currency, paid_at, promo, None, refunded=refunded
            )
            self.event("charge.refunded", obj, when)
        elif roll < REFUND_SHARE + DISPUTE_SHARE:
            when = paid_at + timedelta(days=rng.uniform(3, 40))
            if role is not None and when >= self.now:  # a forced story must happen
                when = paid_at + (self.now - paid_at) * rng.uniform(0.2, 0.9)
            reason = rng.choice(
                (
                    "fraudulent",
                    "product_not_received",
                    "unrecognized",
                    "duplicate",
                    "subscription_canceled",
                )
            )
            obj = dispute(self.ids("dp"), ch, pi, amount, currency, when, reason)
            self.event("charge.dispute.created", obj, when)

    # Attacks and noise

    def attack_time(self, slot: int, slots: int) -> datetime:
        """A time in the `slot`-th of `slots` equal parts of the window: attacks spread out."""
        fraction = (slot + self.rng.uniform(0.15, 0.85)) / slots
        return self.start + (self.now - self.start) * fraction

    def card_testing(self, attempts: int, at: datetime) -> None:
        """Many stolen cards tried from one IP within minutes: mostly declined."""
        rng = self.rng
        attacker = self.customers(1)[0]
        attacker.ip = _ip(rng)
        pi = self.ids("pi")
        for _ in range(attempts):
            card = _card(rng, self.ids)
            self._attempt(
                pi, attacker, card, 100, "usd", at, None, _tester_decline(rng), ip=attacker.ip
            )
            at += timedelta(seconds=rng.uniform(2, 25))

    def account_attack(self, victim: Customer, attempts: int, at: datetime) -> None:
        """A taken-over customer account: many stolen cards tried on it from rotating IPs."""
        rng = self.rng
        pi = self.ids("pi")
        for _ in range(attempts):
            card = _card(rng, self.ids)
            decline = _tester_decline(rng)
            self._attempt(pi, victim, card, 4900, "eur", at, None, decline, ip=_ip(rng))
            at += timedelta(seconds=rng.uniform(20, 120))

    def promotion_abuse(self, attempts: int, at: datetime) -> None:
        """A leaked code used by throwaway accounts, each with a card or two: many declined."""
        rng = self.rng
        code = ABUSED_PROMOTION_CODE
        amount = 9900 * (100 - PROMOTION_CODES[code]) // 100
        for abuser in self.customers(attempts):
            pi = self.ids("pi")
            decline = None if rng.random() < 0.25 else _tester_decline(rng, succeed=0)
            self._attempt(pi, abuser, abuser.cards[0], amount, "usd", at, code, decline)
            at += timedelta(seconds=rng.uniform(30, 300))

    def card_burst(self, customer: Customer, attempts: int, at: datetime) -> None:
        """One card retried again and again in a few minutes."""
        rng = self.rng
        pi = self.ids("pi")
        card = customer.cards[0]
        for _ in range(attempts):
            decline = rng.choice(("insufficient_funds", "card_velocity_exceeded", "do_not_honor"))
            self._attempt(pi, customer, card, 4900, "usd", at, None, decline)
            at += timedelta(seconds=rng.uniform(5, 40))

    def scanners(self, count: int) -> None:
        """Requests that are not from Stripe: no signature, garbage, replayed bodies."""
        rng = self.rng
        faults = ("missing_header", "malformed_header", "bad_signature", "stale", "not_json")
        for _ in range(count):
            at = self.session_time()
            fault = rng.choices(faults, (30, 10, 35, 15, 10))[0]
            self.deliveries.append(Delivery(at, len(self.deliveries), None, fault, _ip(rng)))


def plan(orders: int, days: int, seed: int, now: datetime) -> Plan:
    """The deliveries for `orders` Checkout Sessions over `days` days ending at `now`."""
    planner = _Planner(days, seed, now)
    rng = planner.rng
    # More sessions than orders: those abandoned in the last day have not expired yet, and a
    # paid session whose event keeps failing has no order row.
    poison = max(3, round(orders * POISON_SHARE))
    expiring_late = (1 - PAID_SHARE) * 1.5 / days
    sessions = math.ceil(orders * (1.02 + expiring_late)) + poison + 5
    customers = planner.customers(max(1, int(sessions * 0.65)))
    # Every story appears at least a few times, however small the run.
    wanted = {
        "poison": poison,
        "outage": max(4, round(sessions * 0.0015)),
        "refund": 4,
        "dispute": 3,
    }
    picks = rng.sample(range(sessions), min(sessions, sum(wanted.values())))
    labels = [role for role, n in wanted.items() for _ in range(n)]
    roles = dict(zip(picks, labels, strict=False))
    for index in range(sessions):
        planner.checkout(rng.choice(customers), roles.get(index))
    _attacks(planner, customers, sessions / days)
    planner.scanners(max(5, sessions // 200))
    deliveries = sorted(planner.deliveries)
    incidents = Incidents(planner.outages, frozenset(planner.poison), planner.rotation)
    return Plan(deliveries, incidents, sessions, planner.attempts)


def _attacks(planner: _Planner, customers: list[Customer], per_day: float) -> None:
    """A few attacks of each kind, in random order, spread evenly over the window: about one
    every eight days, each sized to the shop's traffic so that it shows without drowning it."""
    rng, days = planner.rng, planner.days
    kinds = (
        ["card_testing"] * max(2, days // 20)
        + ["account_attack"] * max(1, days // 30)
        + ["promotion_abuse"] * max(1, days // 60)
        + ["card_burst"] * max(1, days // 30)
    )
    rng.shuffle(kinds)
    scale = min(1.0, per_day / ATTACK_TRAFFIC)

    def size(low: int, high: int) -> int:
        return max(8, round(rng.randint(low, high) * scale))

    for slot, kind in enumerate(kinds):
        at = planner.attack_time(slot, len(kinds))
        if kind == "card_testing":
            planner.card_testing(size(50, 120), at)
        elif kind == "account_attack":
            planner.account_attack(rng.choice(customers), size(20, 40), at)
        elif kind == "promotion_abuse":
            planner.promotion_abuse(size(15, 30), at)
        else:
            planner.card_burst(rng.choice(customers), size(12, 30), at)


def _tester_decline(rng: random.Random, succeed: int = 2) -> str | None:
    """What a stolen or made-up card gets: mostly declined, now and then through."""
    return rng.choices(
        (None, "generic_decline", "incorrect_number", "incorrect_cvc", "fraudulent",
         "card_velocity_exceeded", "stolen_card", "lost_card"),
        (succeed, 40, 18, 14, 10, 8, 4, 4),
    )[0]  # fmt: skip


# --- Playing the plan through the webhook path ---------------------------------------------------


@dataclass(frozen=True)
class Report:
    skipped: bool
    deliveries: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    attempts: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        if self.skipped:
            return "demo data already present: nothing done"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"demo: {self.deliveries} webhook deliveries ({counts}); "
            f"{self.orders} orders, {self.attempts} payment attempts in {self.seconds:.1f} s"
        )


def has_demo_data(session: Session) -> bool:
    """Whether demo events are stored (an indexed range on the event id)."""
    upper = DEMO_EVENT_PREFIX[:-1] + chr(ord(DEMO_EVENT_PREFIX[-1]) + 1)
    found = session.execute(
        select(StripeEvent.id)
        .where(StripeEvent.id >= DEMO_EVENT_PREFIX, StripeEvent.id < upper)
        .limit(1)
    ).first()
    return found is not None


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _request(delivery: Delivery, secret: str, tolerance: int) -> tuple[bytes, str | None]:
    """The raw body and Stripe-Signature header of a delivery."""
    ts = _ts(delivery.at)
    if delivery.event is None:  # scanners
        body = b'{"id": "evt_fake", "object": "event"}'
        if delivery.fault == "not_json":
            body = b"<?xml version='1.0'?><probe/>"
            return body, sign(body, secret, ts)
        if delivery.fault == "missing_header":
            return body, None
        if delivery.fault == "malformed_header":
            return body, "signature=deadbeef"
        if delivery.fault == "stale":
            return body, sign(body, secret, ts - tolerance - 3600)
        return body, sign(body, "whsec_guessed_by_a_stranger", ts)
    body = json.dumps(delivery.event, separators=(",", ":")).encode()
    if delivery.fault == "rotated_secret":
        return body, sign(body, ROTATED_SECRET, ts)
    return body, sign(body, secret, ts)


class _Player:
    """Plays deliveries through the receiver's own group commit
    (`core.webhook.receive.receive_many`), `batch` per call, each delivery received at its
    planned time. The simulated fulfilment service reads the demo clock, set once per group:
    groups never straddle the start or end of an outage, so the whole group sees the service
    as it was at each of its deliveries."""

    def __init__(
        self,
        engine: Engine,
        ctx: Context,
        clock: _Clock,
        secrets: Sequence[str],
        tolerance: int,
        incidents: Incidents,
    ) -> None:
        self.engine = engine
        self.ctx = ctx
        self.clock = clock
        self.secrets = list(secrets)  # every configured secret verifies (rotation)
        self.secret = self.secrets[0]  # Stripe signs with the current one
        self.tolerance = tolerance
        self.cuts = sorted({edge for outage in incidents.outages for edge in outage})
        self.outcomes: dict[str, int] = {}

    def groups(self, deliveries: list[Delivery], batch: int) -> Iterator[list[Delivery]]:
        """Runs of at most `batch` deliveries, cut at every outage edge."""
        group: list[Delivery] = []
        cuts = iter(self.cuts)
        cut = next(cuts, None)
        for delivery in deliveries:
            crossed = False
            while cut is not None and delivery.at >= cut:
                crossed, cut = True, next(cuts, None)
            if group and (crossed or len(group) >= batch):
                yield group
                group = []
            group.append(delivery)
        if group:
            yield group

    def play(self, deliveries: list[Delivery], batch: int) -> None:
        for group in self.groups(deliveries, batch):
            requests = []
            for delivery in group:
                body, header = _request(delivery, self.secret, self.tolerance)
                requests.append(
                    receive.Delivery(body, header, delivery.remote_addr, False, delivery.at)
                )
            self.clock.now = group[0].at
            outcomes = receive.receive_many(
                self.engine, requests, secrets=self.secrets, tolerance=self.tolerance, ctx=self.ctx
            )
            for outcome in outcomes:
                stored = "failed" if outcome.result == "error" else outcome.result
                self.outcomes[stored] = self.outcomes.get(stored, 0) + 1


def demo_context(base: Context, incidents: Incidents, clock: Callable[[], datetime]) -> Context:
    """The deployment's handler context on a simulated clock, with a fulfilment service that
    fails during the planned outages and for the planned orders."""

    def fulfiller(session: Session, order: Order) -> None:
        if order.checkout_session_id in incidents.poison_sessions:
            # The service answers, but cannot ship this order: it stays paid, unfulfilled,
            # waiting for the guarded manual path.
            raise FulfillmentDeferred("fulfilment service refused the order (out of stock)")
        if incidents.fulfilment_fails(order.checkout_session_id, clock()):
            raise FulfilmentUnavailable("fulfilment service unavailable (HTTP 503)")
        base.fulfiller(session, order)

    return dataclasses.replace(base, fulfiller=fulfiller, clock=clock)


def run(
    engine: Engine,
    base: Context,
    *,
    orders: int = 20_000,
    days: int = 90,
    seed: int = 7,
    now: datetime | None = None,
    once: bool = False,
    secrets: Sequence[str] = (DEMO_SECRET,),
    tolerance: int = 300,
    batch: int = 1000,
    risk_rules: Rules | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Fill the database with the demo (see the module docstring).

    With `risk_rules`, burst detection runs once over the whole period at the end
    (`core.risk.batch.detect_period`, which stores the same flags as the per-attempt hook) instead
    of after every attempt; pass a `base` context without `on_attempt` hooks then."""
    if orders < 1 or days < 1:
        raise ValueError("orders and days must be positive")
    if not secrets:
        raise ValueError("the demo signs its deliveries: give it a webhook secret")
    if once:
        with session_scope(engine, write=False) as session:
            if has_demo_data(session):
                return Report(skipped=True)
    started = time.perf_counter()
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    the_plan = plan(orders, days, seed, now)
    if progress:
        progress(
            f"planned {len(the_plan.deliveries)} deliveries "
            f"in {time.perf_counter() - started:.1f} s"
        )
    clock = _Clock(now - timedelta(days=days))
    ctx = demo_context(base, the_plan.incidents, clock)
    player = _Player(engine, ctx, clock, secrets, tolerance, the_plan.incidents)
    player.play(the_plan.deliveries, batch)
    if progress:
        progress(f"recorded through the webhook path in {time.perf_counter() - started:.1f} s")
    if risk_rules is not None:
        with session_scope(engine) as session:
            detect_period(session, risk_rules, now=now)
    with session_scope(engine, write=False) as session:
        order_count = session.execute(select(func.count()).select_from(Order)).scalar_one()
        attempt_count = session.execute(
            select(func.count()).select_from(PaymentAttempt)
        ).scalar_one()
    return Report(
        skipped=False,
        deliveries=len(the_plan.deliveries),
        outcomes=player.outcomes,
        orders=int(order_count),
        attempts=int(attempt_count),
        seconds=time.perf_counter() - started,
    )


def iter_promotion_codes() -> Iterator[tuple[str, str, int]]:
    """(id, code, percent off) of the demo's promotion codes, as the stand-in shows them."""
    for code_id, percent in PROMOTION_CODES.items():
        yield code_id, code_id.removeprefix("promo_").upper(), percent
