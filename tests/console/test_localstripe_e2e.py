"""End to end: localstripe (a fake Stripe on 127.0.0.1) signs and sends its own webhook
deliveries to the real receiver; payments made through its API with stripe-python become
payment attempts with the right outcome."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from stripe.params import PaymentMethodCreateParams

from core.db import make_engine
from core.models import PaymentAttempt, StripeEvent, WebhookDelivery
from tests.conftest import SECRET
from tests.support.servers import run_localstripe, run_receiver

DEADLINE_S = 30.0
CLIENT_IP = "203.0.113.5"


def card_method(number: str) -> PaymentMethodCreateParams:
    # Raw card numbers: fine against a local fake, never against Stripe itself.
    return {
        "type": "card",
        "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
    }


def wait_for_attempts(engine: Engine, count: int) -> list[PaymentAttempt]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with Session(engine) as session:
            rows = list(session.scalars(select(PaymentAttempt)))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_localstripe_payments_become_attempts(sqlite_url: str) -> None:
    env = {"DATABASE_URL": sqlite_url, "STRIPE_WEBHOOK_SECRETS": SECRET}
    with run_receiver(env) as receiver, run_localstripe() as fake_stripe:
        configured = httpx.post(
            f"{fake_stripe.url}/_config/webhooks/receiver",
            data={"url": f"{receiver.url}/webhooks/stripe", "secret": SECRET},
        )
        assert configured.status_code == 200
        client = stripe.StripeClient(
            "sk_test_localstripe_e2e",
            base_addresses={"api": fake_stripe.url},
            max_network_retries=0,
        )

        method = client.v1.payment_methods.create(params=card_method("4242424242424242"))
        paid = client.v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "payment_method": method.id,
                "confirm": True,
                "metadata": {"client_ip": CLIENT_IP},
            }
        )
        assert paid.status == "succeeded"

        declining = client.v1.payment_methods.create(params=card_method("4000000000000341"))
        with pytest.raises(stripe.CardError) as declined:
            client.v1.payment_intents.create(
                params={
                    "amount": 3100,
                    "currency": "eur",
                    "payment_method": declining.id,
                    "confirm": True,
                    "metadata": {"client_ip": CLIENT_IP},
                }
            )
        assert declined.value.code == "card_declined"
        assert isinstance(declined.value.json_body, dict)
        declined_charge = declined.value.json_body["error"]["charge"]

        engine = make_engine(sqlite_url)
        try:
            attempts = {a.outcome: a for a in wait_for_attempts(engine, 2)}
            assert set(attempts) == {"succeeded", "failed"}, receiver.output()
            with Session(engine) as session:
                events = session.execute(select(StripeEvent.type, StripeEvent.status)).all()
                deliveries = session.execute(
                    select(WebhookDelivery.verified, WebhookDelivery.http_status)
                ).all()
        finally:
            engine.dispose()

    ok, failed = attempts["succeeded"], attempts["failed"]
    assert paid.latest_charge is not None
    paid_charge = (
        paid.latest_charge if isinstance(paid.latest_charge, str) else paid.latest_charge.id
    )
    assert (ok.id, ok.payment_intent_id, ok.amount, ok.currency) == (
        paid_charge,
        paid.id,
        2000,
        "usd",
    )
    assert (ok.failure_code, ok.decline_code, ok.ip_address) == (None, None, CLIENT_IP)
    assert (failed.id, failed.amount, failed.currency) == (declined_charge, 3100, "eur")
    assert failed.payment_intent_id is not None and failed.payment_intent_id.startswith("pi_")
    assert (failed.failure_code, failed.failure_message) == (
        "card_declined",
        "Your card was declined.",
    )
    assert failed.ip_address == CLIENT_IP
    # localstripe signed both deliveries itself: verified, applied once each.
    assert sorted(tuple(e) for e in events) == [
        ("payment_intent.payment_failed", "processed"),
        ("payment_intent.succeeded", "processed"),
    ]
    assert [tuple(d) for d in deliveries] == [(True, 200), (True, 200)]
