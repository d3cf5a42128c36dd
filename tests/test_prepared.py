"""core.db.Prepared and Raw: the webhook hot path's statements behave as SQLAlchemy's would
(defaults, types, error classes, savepoints), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from core.db import Prepared, hot_path, raw, session_scope
from core.models import StripeEvent, WebhookDelivery

AT = datetime(2026, 11, 23, 12, 30, 15, 123456, tzinfo=UTC)
_INSERT_EVENT = Prepared(insert(StripeEvent.__table__))  # type: ignore[arg-type]
_INSERT_DELIVERY = Prepared(insert(WebhookDelivery.__table__))  # type: ignore[arg-type]
_EVENT = Prepared(
    select(StripeEvent.id, StripeEvent.created, StripeEvent.payload, StripeEvent.deliveries).where(
        StripeEvent.id == bindparam("id")
    )
)


def _event(event_id: str) -> dict[str, object]:
    return {"id": event_id, "type": "charge.failed", "created": AT, "livemode": False,
            "status": "processed", "payload": {"id": event_id, "amount": 500}}  # fmt: skip


def test_defaults_and_types_round_trip(engine: Engine) -> None:
    with session_scope(engine) as session, hot_path(session) as cursor:
        assert cursor.rowcount(_INSERT_EVENT, _event("evt_1")) == 1
        # verified, duration_ms and body_bytes left to their defaults
        cursor.execute(_INSERT_DELIVERY, {"received_at": AT, "http_status": 200, "outcome": "ok"})
        (row,) = cursor.rows(_EVENT, {"id": "evt_1"})
        assert cursor.first(_EVENT, {"id": "evt_missing"}) is None
    # Python-side defaults applied (deliveries=1, first_received_at=now), types converted back.
    assert row == ("evt_1", AT, {"id": "evt_1", "amount": 500}, 1)
    with session_scope(engine, write=False) as session:
        stored = session.execute(select(StripeEvent)).scalar_one()
        delivery = session.execute(select(WebhookDelivery)).scalar_one()
        assert stored.created == AT and stored.first_received_at.tzinfo is UTC
        assert (delivery.verified, delivery.body_bytes, delivery.received_at) == (False, 0, AT)


def test_errors_are_sqlalchemys_and_a_savepoint_undoes_only_its_block(engine: Engine) -> None:
    with session_scope(engine) as session:
        cursor = raw(session)
        cursor.execute(_INSERT_EVENT, _event("evt_kept"))
        with pytest.raises(IntegrityError), cursor.savepoint():
            cursor.execute(_INSERT_EVENT, _event("evt_undone"))
            cursor.execute(_INSERT_EVENT, _event("evt_kept"))  # the same primary key
        cursor.execute(_INSERT_EVENT, _event("evt_after"))  # the transaction goes on
    with session_scope(engine, write=False) as session:
        ids = session.execute(select(StripeEvent.id).order_by(StripeEvent.id)).scalars().all()
    assert ids == ["evt_after", "evt_kept"]
