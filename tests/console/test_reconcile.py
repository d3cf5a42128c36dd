"""Reconciliation against a loopback Stripe: it applies exactly the events we lack and repairs
exactly the paid sessions without a paid order, a second run does nothing, and a webhook racing
it for the same event leaves one application. Replay with a dry run; webhook endpoint health."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from core.__main__ import main
from core.auth.permissions import Actor, PermissionDenied
from core.console.reconcile import endpoint_health, reconcile
from core.console.replay import replay
from core.console.stripe_api import API_VERSION, StripeApi
from core.db import session_scope
from core.models import Fulfillment, Order, OrderTransition, StripeEvent
from core.webhook.handlers import HANDLERS, Context
from core.webhook.receive import apply_event, receive, record_failure
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.stripe_standin import FakeStripe

CRON = Actor("cron")
ADMIN = Actor("alice", "admin")
NOW = datetime.now(UTC)


@pytest.fixture
def client(fake: FakeStripe) -> StripeApi:
    return StripeApi("sk_test_reconcile", api_base=fake.url)


def shop(fake: FakeStripe, sessions: int) -> list[dict[str, Any]]:
    """`sessions` paid Checkout Sessions at Stripe, each with its completed event and its
    PaymentIntent's succeeded event (two events per session), a few minutes apart."""
    events = []
    for n in range(sessions):
        at = int((NOW - timedelta(days=2, minutes=5 * n)).timestamp())
        checkout = so.checkout_session(amount_total=1000 + n, created=at)
        intent = so.payment_intent(intent_id=checkout["payment_intent"], amount=1000 + n)
        fake.add_session(checkout, intent)
        for kind, obj in (
            ("checkout.session.completed", checkout),
            ("payment_intent.succeeded", intent),
        ):
            event = so.event(kind, obj, created=at + 30)
            fake.add_event(event, failed_delivery=n % 7 == 0)
            events.append(event)
    return events


def counts(engine: Engine) -> tuple[int, int, int]:
    with session_scope(engine, write=False) as session:
        return (
            session.execute(select(func.count()).select_from(StripeEvent)).scalar_one(),
            session.execute(
                select(func.count()).select_from(Order).where(Order.paid_at.is_not(None))
            ).scalar_one(),
            session.execute(select(func.count()).select_from(Fulfillment)).scalar_one(),
        )


def test_repairs_exactly_what_is_missing_and_then_nothing(
    engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    events = shop(fake, 50)
    assert len(events) == 100
    missing = random.Random(4).sample(events, 10)
    missing_ids = {e["id"] for e in missing}
    ctx = Context()
    with session_scope(engine) as session:
        for event in events:
            if event["id"] not in missing_ids:
                apply_event(session, event, ctx, "webhook")
    lost = []  # paid at Stripe, never announced to us at all
    for n in range(3):
        checkout = so.checkout_session(amount_total=777, created=int(NOW.timestamp()) - 3600 * n)
        fake.add_session(checkout, so.payment_intent(intent_id=checkout["payment_intent"]))
        lost.append(checkout["id"])
    unpaid = so.checkout_session(payment_status="unpaid", status="open")
    fake.add_session(unpaid)  # listed only when complete: never repaired
    before = counts(engine)

    report = reconcile(engine, client, ctx, CRON)

    assert sorted(report.applied) == sorted(missing_ids)
    assert sorted(report.sessions_repaired) == sorted(lost)
    assert report.events_seen == 100 and report.failed == [] and report.raced == []
    assert report.delivery_failed == sum(1 for e in fake.events.values() if e["_failed_delivery"])
    missing_completed = sum(1 for e in missing if e["type"] == "checkout.session.completed")
    assert counts(engine) == (
        before[0] + 10 + 3,
        before[1] + missing_completed + 3,
        before[2] + missing_completed + 3,
    )
    with session_scope(engine, write=False) as session:
        sources = dict(
            session.execute(
                select(Fulfillment.source, func.count()).group_by(Fulfillment.source)
            ).all()
        )
        assert sources.get("reconcile") == missing_completed + 3
        repaired = session.execute(
            select(Order).where(Order.checkout_session_id.in_(lost))
        ).scalars()
        assert {(o.status, o.amount_total) for o in repaired} == {("fulfilled", 777)}
        applied_sources = session.execute(
            select(StripeEvent.source).where(StripeEvent.id.in_(missing_ids))
        ).scalars()
        assert set(applied_sources) == {"reconcile"}

    second = reconcile(engine, client, ctx, CRON)
    assert second.nothing_to_do and second.applied == [] and second.sessions_repaired == []
    assert "nothing to do" in second.lines()[-1]
    assert counts(engine) == (before[0] + 13, before[1] + missing_completed + 3,
                              before[2] + missing_completed + 3)  # fmt: skip


def test_a_failed_event_is_applied_again(
    sqlite_engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    (completed, succeeded) = shop(fake, 1)
    with session_scope(sqlite_engine) as session:
        apply_event(session, succeeded, Context(), "webhook")
        record_failure(session, completed, "RuntimeError: fulfiller down", NOW)
    report = reconcile(sqlite_engine, client, Context(), CRON)
    assert report.applied == [completed["id"]]
    with session_scope(sqlite_engine, write=False) as session:
        row = session.get(StripeEvent, completed["id"])
        assert row is not None and (row.status, row.source) == ("processed", "reconcile")


def test_an_impossible_event_is_stored_once_not_failed_on_every_run(
    sqlite_engine: Engine, fake: FakeStripe, client: StripeApi
) -> None:
    """Issue 11, finding 4: an event that can never be applied used to fail every
    reconciliation the same way. It is stored as unprocessable with its reason, reported as
    skipped, and a second run has nothing to do."""
    impossible = so.event("charge.refunded", {})
    fake.add_event(impossible)
    first = reconcile(sqlite_engine, client, Context(), CRON)
    assert (first.failed, first.skipped) == ([], [(impossible["id"], "unprocessable")])
    with session_scope(sqlite_engine, write=False) as session:
        row = session.get(StripeEvent, impossible["id"])
        assert row is not None
        assert (row.status, row.last_error) == ("unprocessable", "data.object.id: missing")
    second = reconcile(sqlite_engine, client, Context(), CRON)
    assert (second.failed, second.skipped, second.applied) == ([], [], [])


@pytest.mark.parametrize("attempt", range(3))
def test_reconciliation_racing_a_webhook_applies_the_event_once(
    engine: Engine, fake: FakeStripe, client: StripeApi, attempt: int
) -> None:
    (completed, succeeded) = shop(fake, 1)
    ctx = Context()
    with session_scope(engine) as session:
        apply_event(session, succeeded, ctx, "webhook")
    body, header = so.signed(completed, SECRET)
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def webhook() -> None:
        barrier.wait()
        outcome = receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx)
        results["webhook"] = outcome.result

    def reconciliation() -> None:
        barrier.wait()
        results["reconcile"] = reconcile(engine, client, ctx, CRON)

    threads = [threading.Thread(target=webhook), threading.Thread(target=reconciliation)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    report = results["reconcile"]
    applied_by_reconcile = completed["id"] in report.applied
    assert (results["webhook"] == "processed") != applied_by_reconcile
    assert results["webhook"] in ("processed", "duplicate")
    with session_scope(engine, write=False) as session:
        row = session.get(StripeEvent, completed["id"])
        assert row is not None and row.status == "processed"
        assert session.execute(select(func.count()).select_from(Fulfillment)).scalar_one() == 1
        transitions = session.execute(
            select(OrderTransition.to_status).order_by(OrderTransition.id)
        ).scalars()
        assert list(transitions) == ["paid", "fulfilled"]


# --- Replay -------------------------------------------------------------------------------------


def test_replay_dry_run_shows_changes_and_rolls_back(engine: Engine, fake: FakeStripe) -> None:
    (completed, _) = shop(fake, 1)
    ctx = Context()
    with session_scope(engine) as session:
        record_failure(session, completed, "RuntimeError: fulfiller down", NOW)

    dry = replay(engine, ctx, ADMIN, completed["id"], dry_run=True)
    assert dry.status_before == "failed" and dry.status_after == "processed"
    tables = sorted({(c.table, c.kind) for c in dry.changes})
    assert tables == [
        ("fulfillments", "added"),
        ("order_transitions", "added"),
        ("orders", "added"),
    ]
    assert "would change" in dry.summary()
    assert counts(engine) == (1, 0, 0)  # rolled back: nothing changed

    done = replay(engine, ctx, ADMIN, completed["id"], dry_run=False)
    assert [(c.table, c.kind) for c in done.changes] == [(c.table, c.kind) for c in dry.changes]
    assert counts(engine) == (1, 1, 1)
    with session_scope(engine, write=False) as session:
        row = session.get(StripeEvent, completed["id"])
        assert row is not None and (row.status, row.source) == ("processed", "replay")

    again = replay(engine, ctx, ADMIN, completed["id"], dry_run=True)
    assert again.changes_nothing and "changed nothing" not in again.summary()
    assert "would change nothing: it was already applied" in again.summary()
    applied = replay(engine, ctx, ADMIN, completed["id"], dry_run=False)
    assert applied.changes_nothing and counts(engine) == (1, 1, 1)


def test_replay_is_for_admins_and_known_events(sqlite_engine: Engine) -> None:
    with pytest.raises(PermissionDenied):
        replay(sqlite_engine, Context(), Actor("fran", "finance"), "evt_x", dry_run=True)
    with pytest.raises(LookupError):
        replay(sqlite_engine, Context(), ADMIN, "evt_unknown", dry_run=True)


# --- Webhook endpoint health -------------------------------------------------------------------


def test_endpoint_health(fake: FakeStripe, client: StripeApi) -> None:
    fake.add_endpoint(id="we_good", enabled_events=["*"], api_version=API_VERSION)
    fake.add_endpoint(
        id="we_partial",
        enabled_events=["checkout.session.completed", "charge.refunded"],
        api_version="2020-08-27",
        created=1,
    )
    fake.add_endpoint(id="we_off", status="disabled", enabled_events=sorted(HANDLERS), created=2)
    stuck = so.event("charge.refunded", so.charge(), created=int(NOW.timestamp()) - 600)
    fake.add_event(stuck, pending_webhooks=2)
    fake.add_event(so.event("charge.succeeded", so.charge()), pending_webhooks=0)
    fake.add_event(
        so.event("charge.failed", so.charge(), created=int((NOW - timedelta(days=5)).timestamp())),
        pending_webhooks=1,
    )  # older than Stripe's three days of retries: not listed

    health = endpoint_health(client, Actor("fran", "finance"), now=NOW)
    by_id = {e.id: e for e in health.endpoints}
    assert by_id["we_good"].healthy
    partial = by_id["we_partial"]
    assert not partial.version_matches and partial.api_version == "2020-08-27"
    assert set(partial.missing_events) == set(HANDLERS) - {
        "checkout.session.completed",
        "charge.refunded",
    }
    assert by_id["we_off"].status == "disabled" and not by_id["we_off"].healthy
    assert by_id["we_off"].api_version is None and not by_id["we_off"].version_matches
    assert [(p.id, p.pending_webhooks) for p in health.pending] == [(stuck["id"], 2)]
    with pytest.raises(PermissionDenied):
        endpoint_health(client, Actor("sam", "support"), now=NOW)


# --- The command line ---------------------------------------------------------------------------


def test_cli_reconcile_and_replay(
    sqlite_url: str,
    fake: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (completed, _) = shop(fake, 1)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_cli_reconcile")
    monkeypatch.setenv("STRIPE_API_BASE", fake.url)
    assert main(["reconcile", "--days", "7"]) == 0
    out = capsys.readouterr().out
    assert "missing events applied: 2" in out and completed["id"] in out
    assert "stand-in" in out  # STRIPE_API_BASE is set: the output says it is not Stripe
    assert main(["reconcile"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["reconcile", "--days", "31"]) == 2
    assert main(["replay", completed["id"]]) == 0
    assert "would change nothing" in capsys.readouterr().out
    assert main(["replay", "evt_nope"]) == 1
    assert "sk_test_cli_reconcile" not in capsys.readouterr().err
