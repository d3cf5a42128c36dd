"""Retention (issues 11 and 12): `python -m core retention` removes delivery rows, rejected
request samples and counters, and raw event bodies past their ages; nothing else; a second
run changes nothing; a dry run changes nothing; an applied run is audited."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from core.auth.permissions import Actor, PermissionDenied
from core.console import retention
from core.models import (
    AuditEntry,
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
    WebhookRejection,
)
from core.webhook.handlers import Context
from core.webhook.receive import receive
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.servers import base_env

NOW = datetime(2026, 12, 5, 3, 15, tzinfo=UTC)
ADMIN = Actor("ada", "admin")
POLICY = retention.Policy(deliveries_days=90, rejection_samples_days=30, event_bodies_days=90)
ROOT = Path(__file__).resolve().parents[2]


def _deliver(engine: Engine, evt: dict[str, Any], at: datetime, body: bytes | None = None) -> None:
    signed, header = so.signed(evt, SECRET, timestamp=int(at.timestamp()))
    receive(
        engine,
        body if body is not None else signed,
        header,
        secrets=[SECRET],
        tolerance=300,
        ctx=Context(clock=lambda: at),
        remote_addr="10.0.0.1",
    )


def _seed(engine: Engine) -> dict[str, str]:
    """A paid order, a failed attempt and a rejected request 100 days old, the same 40 days
    old, and the same 1 day old (each through the real webhook path)."""
    ids = {}
    for label, days in (("old", 100), ("middle", 40), ("new", 1)):
        at = NOW - timedelta(days=days)
        created = int(at.timestamp()) - 60
        paid = so.event("checkout.session.completed", so.checkout_session(created=created))
        paid["created"] = created
        declined = so.event("payment_intent.payment_failed", so.payment_intent(succeeded=False))
        declined["created"] = created
        _deliver(engine, paid, at)
        _deliver(engine, declined, at)
        _deliver(engine, paid, at, body=b'{"tampered": true}')  # rejected
        ids[label] = paid["id"]
    return ids


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def _money(engine: Engine) -> list[int]:
    return [
        _count(engine, model) for model in (Order, OrderTransition, Fulfillment, PaymentAttempt)
    ]


def test_only_rows_past_their_age_go_and_a_second_run_changes_nothing(engine: Engine) -> None:
    ids = _seed(engine)
    money = _money(engine)
    assert _count(engine, StripeEvent) == 6
    assert _count(engine, WebhookDelivery, WebhookDelivery.outcome == "rejected") == 3

    dry = retention.run(engine, POLICY, ADMIN, now=NOW)
    expected = {
        "delivery_rows": 2,  # the two events of 100 days ago
        "rejection_samples": 2,  # 100 and 40 days old (samples are kept 30 days)
        "rejection_counters": 1,
        "event_bodies": 2,
    }
    assert (dry.applied, dry.counts) == (False, expected)
    assert _count(engine, WebhookDelivery) == 9 and _count(engine, AuditEntry) == 0

    done = retention.run(engine, POLICY, ADMIN, apply=True, now=NOW)
    assert done.counts == expected
    assert _count(engine, WebhookDelivery) == 9 - 2 - 2
    assert _count(engine, WebhookRejection) == 2
    assert _count(engine, StripeEvent) == 6  # event rows are never deleted
    assert _money(engine) == money  # nor anything money depends on
    with engine.connect() as conn:
        bodies = {r[0]: r[1] for r in conn.execute(select(StripeEvent.id, StripeEvent.payload))}
    assert bodies[ids["old"]] == retention.PRUNED_BODY
    assert bodies[ids["middle"]]["id"] == ids["middle"]  # younger bodies untouched

    again = retention.run(engine, POLICY, ADMIN, apply=True, now=NOW)
    assert set(again.counts.values()) == {0}
    assert _count(engine, WebhookDelivery) == 5 and _money(engine) == money
    with engine.connect() as conn:
        entries = conn.execute(
            select(AuditEntry.actor, AuditEntry.action).order_by(AuditEntry.id)
        ).all()
    assert [tuple(e) for e in entries] == [("ada", retention.ACTION)] * 2


def test_failed_and_unprocessable_events_keep_their_body_for_the_replay(engine: Engine) -> None:
    at = NOW - timedelta(days=200)
    evt = so.event("checkout.session.completed", so.checkout_session())
    del evt["data"]["object"]["id"]  # unprocessable
    _deliver(engine, evt, at)
    assert retention.run(engine, POLICY, ADMIN, apply=True, now=NOW).counts["event_bodies"] == 0
    with engine.connect() as conn:
        assert conn.execute(select(StripeEvent.payload)).scalar_one()["id"] == evt["id"]


def test_retention_is_for_admins_only(engine: Engine) -> None:
    with pytest.raises(PermissionDenied):
        retention.run(engine, POLICY, Actor("fred", "finance"), apply=True, now=NOW)


def test_the_retention_command_is_a_dry_run_unless_told(sqlite_url: str, tmp_path: Path) -> None:
    env = base_env({"DATABASE_URL": sqlite_url, "PYTHONPATH": str(ROOT)})

    def command(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "core", "retention", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "would remove (dry run" in command()
    assert "delivery_rows: removed 0" in command("--apply")
