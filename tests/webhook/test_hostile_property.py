"""Issue 11, property: signed events built from Stripe's real example objects, with a hostile
value in a field the handlers read, are never answered 5xx, and every delivery leaves its row;
the valid event delivered in the same group is always applied."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from core.db import make_engine
from core.models import Order, StripeEvent, WebhookDelivery
from core.webhook.handlers import Context
from core.webhook.receive import Delivery, receive_many
from core.webhook.validate import clean
from tests.conftest import SECRET
from tests.support import stripe_objects as so

NOW = datetime.now(UTC).replace(microsecond=0)

# Event types and the paths in their object that core.webhook.handlers reads.
READ: dict[str, list[tuple[str, ...]]] = {
    "checkout.session.completed": [
        ("id",), ("payment_intent",), ("customer",), ("customer_email",),
        ("customer_details", "email"), ("amount_total",), ("currency",), ("created",),
        ("discounts",), ("metadata", "promotion_code"), ("payment_status",), ("livemode",),
    ],
    "charge.failed": [
        ("id",), ("payment_intent",), ("customer",), ("amount",), ("currency",), ("created",),
        ("billing_details", "email"), ("receipt_email",), ("outcome",), ("outcome", "reason"),
        ("payment_method_details", "card", "fingerprint"), ("metadata", "client_ip"),
        ("failure_message",), ("failure_code",), ("status",),
    ],
    "payment_intent.payment_failed": [
        ("id",), ("customer",), ("latest_charge",), ("charges",), ("amount",), ("currency",),
        ("last_payment_error", "charge"), ("last_payment_error", "decline_code"),
        ("last_payment_error", "payment_method", "card", "last4"), ("receipt_email",),
    ],
    "charge.refunded": [("id",), ("payment_intent",), ("amount",), ("amount_refunded",)],
    "charge.dispute.created": [("id",), ("payment_intent",), ("charge",)],
}  # fmt: skip

HOSTILE_TEXT = st.sampled_from(
    ["", "\x00", "cs_\x00", "\ud800", "pi_\udfff", "a" * 300, "x" * 5000, "é" * 300, " ", "\n"]
)
HOSTILE_INT = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 253402300800, -1, 0]),
    st.integers(min_value=-(2**80), max_value=2**80),
)
HOSTILE = st.one_of(
    HOSTILE_TEXT,
    st.text(max_size=40),
    HOSTILE_INT,
    st.sampled_from([None, True, False, 1.5, float("1e300"), [], {}, {"id": "\x00"}, [None]]),
    st.dictionaries(st.sampled_from(["id", "object", "amount"]), HOSTILE_INT | HOSTILE_TEXT),
)


def _object(event_type: str) -> dict[str, Any]:
    if event_type.startswith("checkout.session"):
        return so.checkout_session()
    if event_type == "payment_intent.payment_failed":
        return so.payment_intent(succeeded=False)
    if event_type == "charge.dispute.created":
        return so.dispute(charge_id=so.unique("ch"), payment_intent=so.unique("pi"))
    return so.charge()


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(obj.get(part), dict):
            obj[part] = {}
        obj = obj[part]
    obj[path[-1]] = value


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(sorted(READ)))
    obj = _object(event_type)
    for path in draw(st.lists(st.sampled_from(READ[event_type]), min_size=1, max_size=3)):
        _put(obj, path, draw(HOSTILE))
    evt = so.event(event_type, obj)
    if draw(st.booleans()):
        evt["api_version"] = draw(HOSTILE_TEXT)
    return evt


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Engine]:
    """One SQLite database for every example (each example's events are new)."""
    path = tmp_path_factory.mktemp("property") / "payments.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(hostile_events(), min_size=1, max_size=4))
def test_hostile_values_never_get_a_5xx_and_every_delivery_has_its_row(
    database: Engine, events: list[dict[str, Any]]
) -> None:
    valid = so.event("checkout.session.completed", so.checkout_session())
    group = [*events, valid]
    deliveries = [
        Delivery(*so.signed(evt, SECRET, int(NOW.timestamp())), remote_addr="127.0.0.1")
        for evt in group
    ]
    outcomes = receive_many(
        database, deliveries, secrets=[SECRET], tolerance=300, ctx=Context(clock=lambda: NOW)
    )
    for evt, outcome in zip(group, outcomes, strict=True):
        assert outcome.status < 500, (evt["type"], outcome)
        key = clean(evt["id"], 255)
        assert outcome.event_id == key
        assert _count(database, WebhookDelivery, WebhookDelivery.event_id == key) == 1
        assert _count(database, StripeEvent, StripeEvent.id == key) == 1
    assert outcomes[-1].result == "processed"
    assert _count(database, Order, Order.checkout_session_id == valid["data"]["object"]["id"]) == 1
