"""Issue 11 over real HTTP against a running receiver: impossible events are answered 200
`unprocessable` (finding 4), and a flood of unauthenticated requests is counted, not stored
row by row (finding 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from core.db import make_engine
from core.models import StripeEvent, WebhookDelivery, WebhookRejection
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.servers import Running, run_receiver
from tests.webhook.test_isolation import HOSTILE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver(db_url: str) -> Iterator[Running]:
    # PYTHONPATH: the receiver runs this checkout's code, whatever is installed.
    env = {"DATABASE_URL": db_url, "STRIPE_WEBHOOK_SECRETS": SECRET, "PYTHONPATH": str(ROOT)}
    with run_receiver(env) as running:
        yield running


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _post(client: httpx.Client, url: str, body: bytes, header: str) -> httpx.Response:
    return client.post(
        url + "/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def _sum(engine: Engine, column: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(column), 0))).scalar_one())


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_signed_impossible_events_are_answered_200_not_500(receiver: Running, db: Engine) -> None:
    """Finding 4: integers beyond 64 bits, `created` past 9999, lone surrogates, a missing or
    non-string object id, `{}` as the object: each answered 200 `unprocessable` (twice: a
    retry gets the same answer), stored with its reason."""
    with httpx.Client(timeout=30) as client:
        for what, make in HOSTILE:
            body, header = so.signed(make(), SECRET)
            for _ in range(2):
                response = _post(client, receiver.url, body, header)
                assert response.status_code == 200, (what, response.text)
                assert response.json()["result"] == "unprocessable", what
        metrics = client.get(receiver.url + "/metrics").text
    assert 'webhook_deliveries_total{outcome="unprocessable"' in metrics
    assert _count(db, StripeEvent, StripeEvent.status == "unprocessable") == len(HOSTILE)


def test_a_flood_of_unsigned_requests_is_counted_not_stored(receiver: Running, db: Engine) -> None:
    """Finding 6: every unauthenticated POST used to become a stored row. Now 300 of them are
    300 in the per-minute counters and at most a few sampled rows; the answers and /metrics
    are unchanged."""
    flood = 300
    with httpx.Client(timeout=30) as client:
        for index in range(flood):
            response = _post(client, receiver.url, b'{"id": "evt_x"}', f"t=1,v1={index:064x}")
            assert response.status_code == 400
        metrics = client.get(receiver.url + "/metrics").text
    assert _sum(db, WebhookRejection.deliveries) == flood
    minutes = _count(db, WebhookRejection)
    sampled = _count(db, WebhookDelivery, WebhookDelivery.outcome == "rejected")
    assert 1 <= sampled <= 3 * minutes <= 3 * 2  # the flood spans at most two minutes
    line = (
        f'webhook_deliveries_total{{outcome="rejected",reason="no_matching_signature"}} {flood}.0'
    )
    assert line in metrics
