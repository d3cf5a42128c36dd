"""Issue 11, crash safety: a receiver under signed load is killed with SIGKILL and restarted,
several times (SQLite and PostgreSQL). Afterwards every delivery answered 2xx has its event
applied, no order moved backwards, and no order was fulfilled twice.

Each round sends every event of the load again (Stripe redelivers what it did not see
answered), so events cut off by a kill are applied by a later round."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from core.db import make_engine
from core.models import Fulfillment, Order, OrderTransition, StripeEvent
from core.webhook.orders import RANK
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.servers import run_receiver

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3
SENDERS = 6
ORDERS = 100


def _load(orders: int) -> list[dict[str, Any]]:
    """For each order: the completed session, its charge, and a refund of part of it."""
    events = []
    for _ in range(orders):
        session = so.checkout_session()
        intent = session["payment_intent"]
        charge = so.charge(payment_intent=intent)
        refunded = dict(charge, amount_refunded=500, refunded=False)
        events += [
            so.event("checkout.session.completed", session),
            so.event("charge.succeeded", charge),
            so.event("charge.refunded", refunded),
        ]
    return events


def _send(url: str, events: list[dict[str, Any]], answered: dict[str, int], stop: Any) -> None:
    with httpx.Client(timeout=10) as client:
        for evt in events:
            if stop.is_set():
                return
            body, header = so.signed(evt, SECRET)
            try:
                response = client.post(
                    url + "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": header, "Content-Type": "application/json"},
                )
            except httpx.HTTPError:
                answered["(cut off)"] = answered.get("(cut off)", 0) + 1
                continue  # the receiver was killed under us: Stripe would redeliver
            if 200 <= response.status_code < 300:
                answered[evt["id"]] = response.status_code


def test_sigkill_under_load_loses_nothing_answered(db_url: str) -> None:
    events = _load(ORDERS)
    answered: dict[str, int] = {}
    env = {"DATABASE_URL": db_url, "STRIPE_WEBHOOK_SECRETS": SECRET, "PYTHONPATH": str(ROOT)}
    for round_number in range(ROUNDS + 1):
        with run_receiver(env) as receiver:
            stop = threading.Event()
            shares = [events[i::SENDERS] for i in range(SENDERS)]
            threads = [
                threading.Thread(target=_send, args=(receiver.url, share, answered, stop))
                for share in shares
            ]
            for thread in threads:
                thread.start()
            if round_number < ROUNDS:  # the last round runs to the end, undisturbed
                time.sleep(0.2 + 0.2 * round_number)
                os.killpg(receiver.process.pid, signal.SIGKILL)
                receiver.process.wait()
                stop.set()
            for thread in threads:
                thread.join(timeout=120)

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = {r[0]: r[1] for r in conn.execute(select(StripeEvent.id, StripeEvent.status))}
            assert answered.pop("(cut off)", 0) > 0  # the kills did land under load
            for event_id in answered:
                assert stored.get(event_id) == "processed", event_id
            assert conn.execute(select(func.count()).select_from(Order)).scalar_one() == ORDERS
            fulfilled = conn.execute(
                select(Fulfillment.order_id, func.count()).group_by(Fulfillment.order_id)
            ).all()
            # A refund that arrived before the payment leaves its order unfulfillable: at most
            # one fulfillment per order, never two.
            assert all(n == 1 for _, n in fulfilled)
            moves = conn.execute(
                select(OrderTransition.from_status, OrderTransition.to_status)
            ).all()
            assert all(RANK[new] > RANK[old] for old, new in moves)
            statuses = set(conn.execute(select(Order.status)).scalars())
            assert statuses == {"partially_refunded"}
    finally:
        engine.dispose()
