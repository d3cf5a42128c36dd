"""Risk flags in the database: raised on the webhook path from signed Stripe events, recomputed
by `python -m core bursts`, both equal to the pure detection; reviewed with an audit entry."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine, delete, func, select

from core.__main__ import main as cli
from core.auth import audit
from core.auth.permissions import Actor, PermissionDenied
from core.db import get_engine, session_scope
from core.models import AuditEntry, PaymentAttempt, RiskFlag
from core.risk import batch, detector, hook, reviews
from core.risk.detector import Attempt, Rules
from core.runtime import webhook_context
from core.settings import load_settings
from core.webhook import receive
from core.webhook.handlers import Context, record_attempt
from tests.conftest import SECRET
from tests.risk.test_bursts import streams
from tests.support import stripe_objects as so

RULES = Rules()
# Events are signed now; their `created` (Stripe's time, which detection counts in) is earlier.
START = int(time.time()) - 3 * 3600


def deliver(engine: Engine, evt: dict[str, Any], ctx: Context) -> receive.Outcome:
    body, header = so.signed(evt, SECRET)
    return receive.receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx)


def failed_charge(at: int, **kwargs: Any) -> dict[str, Any]:
    return so.event("charge.failed", so.charge(succeeded=False, created=at, **kwargs), created=at)


def failed_intent(at: int, **kwargs: Any) -> dict[str, Any]:
    return so.event(
        "payment_intent.payment_failed", so.payment_intent(succeeded=False, **kwargs), created=at
    )


def stored_flags(engine: Engine) -> list[tuple[Any, ...]]:
    with session_scope(engine, write=False) as session:
        rows = session.execute(select(RiskFlag)).scalars().all()
        return sorted(
            (
                r.entity_kind,
                r.entity_value,
                r.pattern,
                r.window_start,
                r.window_end,
                r.failures,
                r.distinct_cards,
            )
            for r in rows
        )


def detected(engine: Engine, rules: Rules = RULES) -> list[tuple[Any, ...]]:
    """What the pure function says for every attempt in the database."""
    with session_scope(engine, write=False) as session:
        rows = session.execute(
            select(PaymentAttempt).where(PaymentAttempt.outcome == "failed")
        ).scalars()
        attempts = [
            Attempt(
                r.id,
                r.created,
                r.card_fingerprint,
                r.customer_id,
                r.email,
                r.ip_address,
                r.promotion_code,
            )
            for r in rows
        ]
    return sorted(f.key for f in detector.detect(attempts, rules))


def run_bursts(db_url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("DATABASE_URL", db_url)
    try:
        return cli(["bursts", "--no-alerts", *args])
    finally:
        get_engine(db_url).dispose()  # close the command's pooled connections now


def test_webhook_path_raises_flags_and_batch_agrees(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = webhook_context(load_settings())
    # One card declined five times in 40 minutes, delivered out of order and some twice;
    # one IP trying three different cards (card testing); one customer failing sparsely.
    card_events = [
        failed_charge(START + 2400, fingerprint="fpBURST", last4="0002"),
        failed_intent(START, fingerprint="fpBURST"),
        failed_charge(START + 1200, fingerprint="fpBURST", last4="0002"),
        failed_intent(START + 600, fingerprint="fpBURST"),
        failed_charge(START + 1800, fingerprint="fpBURST", last4="0002"),
    ]
    testing = [
        failed_charge(START + 7200 + i * 60, fingerprint=f"fpTEST{i}", client_ip="203.0.113.50")
        for i in range(3)
    ]
    sparse = [  # four failures, 50 minutes apart: never four within an hour
        failed_charge(START + i * 3000, fingerprint=f"fpSPARSE{i}", email="sparse@example.com")
        for i in range(4)
    ]
    for evt in [*card_events, card_events[0], card_events[2], *testing, *sparse, testing[1]]:
        assert deliver(engine, evt, ctx).status == 200
    flags = stored_flags(engine)
    summary = {(k, v, p): (n, c) for k, v, p, _s, _e, n, c in flags}
    assert summary[("card", "fpBURST", "burst")] == (5, 1)
    assert summary[("ip", "203.0.113.50", "card_testing")] == (3, 3)
    assert not any(v == "sparse@example.com" for _k, v, _p in summary)
    assert flags == detected(engine)

    # The batch command over the whole history finds the same flags, and changes nothing.
    assert run_bursts(db_url, monkeypatch) == 0
    assert "0 new, 0 updated, 0 merged away" in capsys.readouterr().out
    assert stored_flags(engine) == flags
    # From an empty risk_flags table it rebuilds exactly those flags.
    with session_scope(engine) as session:
        session.execute(delete(RiskFlag))
    assert run_bursts(db_url, monkeypatch) == 0
    assert stored_flags(engine) == flags


def test_success_adds_nothing_and_flags_survive_a_new_process(engine: Engine) -> None:
    ctx = webhook_context(load_settings())
    for i in range(3):
        deliver(engine, failed_charge(START + i * 60, fingerprint="fpRESTART"), ctx)
    ok = so.event(
        "charge.succeeded", so.charge(fingerprint="fpRESTART", created=START + 200), created=START
    )
    deliver(engine, ok, ctx)
    assert stored_flags(engine) == []
    # A new process (new context) continues from the rows: the fourth failure makes the burst.
    deliver(
        engine,
        failed_charge(START + 240, fingerprint="fpRESTART"),
        webhook_context(load_settings()),
    )
    assert [f[:3] + f[5:6] for f in stored_flags(engine)] == [("card", "fpRESTART", "burst", 4)]


def test_an_attempt_moved_earlier_by_its_charge_is_recounted(engine: Engine) -> None:
    """The PaymentIntent event stamps the attempt at the event time; its charge, arriving
    later, carries the earlier charge time. Only at the earlier time does it complete a burst."""
    ctx = webhook_context(load_settings())
    for i in range(3):
        deliver(
            engine, failed_charge(START + i * 600, fingerprint="fpMOVE", charge_id=f"ch_mv{i}"), ctx
        )
    intent = so.payment_intent(succeeded=False, fingerprint="fpMOVE", charge_id="ch_mv3")
    deliver(engine, so.event("payment_intent.payment_failed", intent, created=START + 5000), ctx)
    assert stored_flags(engine) == []  # 5000 s later: outside the hour
    charge = so.charge(
        succeeded=False, charge_id="ch_mv3", fingerprint="fpMOVE", created=START + 1800
    )
    deliver(engine, so.event("charge.failed", charge, created=START + 1801), ctx)
    assert [f[5] for f in stored_flags(engine)] == [4]
    assert stored_flags(engine) == detected(engine)


def test_batch_over_two_periods_equals_one(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = datetime.fromtimestamp(START, UTC)
    with session_scope(engine) as session:
        for i, minutes in enumerate([0, 10, 20, 30, 50, 70, 90, 200, 201, 202, 203]):
            session.add(
                PaymentAttempt(
                    id=f"ch_split{i}",
                    outcome="failed",
                    created=base + timedelta(minutes=minutes),
                    email="split@example.com",
                )
            )
    middle = (base + timedelta(minutes=40)).isoformat()
    assert run_bursts(db_url, monkeypatch, "--until", middle) == 0
    assert run_bursts(db_url, monkeypatch, "--since", middle) == 0
    assert stored_flags(engine) == detected(engine)
    assert [f[5] for f in stored_flags(engine)] == [7, 4]


def test_bursts_command_refuses_a_bad_period(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_bursts(db_url, monkeypatch, "--since", "2026-02-01", "--until", "2026-01-01") == 2
    with pytest.raises(SystemExit):
        run_bursts(db_url, monkeypatch, "--since", "yesterday")
    assert "not an ISO 8601" in capsys.readouterr().err


# --- Incremental (webhook hook) and batch agree on random streams, in the database ---------------


def _values(a: Attempt) -> dict[str, Any]:
    return {
        "id": a.id,
        "payment_intent_id": None,
        "customer_id": a.customer_id,
        "email": a.email,
        "card_fingerprint": a.card_fingerprint,
        "card_last4": None,
        "card_brand": None,
        "ip_address": a.ip_address,
        "promotion_code": a.promotion_code,
        "amount": a.amount or 0,  # 0: not known yet, as the handlers store it
        "currency": a.currency,
        "outcome": "failed",
        "failure_code": a.failure_code,
        "decline_code": a.decline_code,
        "network_status": None,
        "failure_message": None,
        "created": a.created,
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(streams())
def test_database_incremental_equals_batch(
    sqlite_engine: Engine, data: tuple[list[Attempt], list[Attempt]]
) -> None:
    attempts, stream = data
    rules = Rules(threshold=3, window=timedelta(minutes=60), card_testing_threshold=3)
    ctx = Context(on_attempt=(hook.attempt_hook(rules),))
    with session_scope(sqlite_engine) as session:
        session.execute(delete(RiskFlag))
        session.execute(delete(PaymentAttempt))
    for n, a in enumerate(stream):
        with session_scope(sqlite_engine) as session:
            record_attempt(session, _values(a), {"id": f"evt_{n}", "type": "charge.failed"}, ctx)
    expected = sorted(f.key for f in detector.detect(attempts, rules))
    assert stored_flags(sqlite_engine) == expected
    with session_scope(sqlite_engine) as session:
        result = batch.detect_period(session, rules)
    assert result.changes.created == result.changes.updated == result.changes.removed == []
    with session_scope(sqlite_engine) as session:
        session.execute(delete(RiskFlag))
    with session_scope(sqlite_engine) as session:
        batch.detect_period(session, rules)
    assert stored_flags(sqlite_engine) == expected


# --- Review -----------------------------------------------------------------------------------


def _flag(engine: Engine) -> int:
    base = datetime.fromtimestamp(START, UTC)
    with session_scope(engine) as session:
        for i in range(4):
            session.add(
                PaymentAttempt(
                    id=f"ch_rev{i}",
                    outcome="failed",
                    created=base + timedelta(minutes=i),
                    ip_address="198.51.100.4",
                    email="buyer@example.com",
                )
            )
        session.flush()
        batch.detect_period(session, RULES)
        return session.execute(
            select(RiskFlag.id).where(RiskFlag.entity_kind == "email")
        ).scalar_one()


@pytest.mark.parametrize("decision", ["confirm", "dismiss"])
def test_review_is_audited(engine: Engine, decision: reviews.Decision) -> None:
    flag_id = _flag(engine)
    actor = Actor("fiona", "finance")
    with session_scope(engine) as session:
        reviews.review(session, actor, flag_id, decision, "Checked with the bank.")
    with session_scope(engine, write=False) as session:
        flag = session.get_one(RiskFlag, flag_id)
        assert flag.status == {"confirm": "confirmed", "dismiss": "dismissed"}[decision]
        assert (flag.reviewed_by, flag.note) == ("fiona", "Checked with the bank.")
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.id.desc())).scalars().first()
        assert entry is not None
        assert (entry.actor, entry.role, entry.action, entry.target) == (
            "fiona",
            "finance",
            f"risk.flag_{flag.status}",
            f"risk_flag:{flag_id}",
        )
        assert entry.details["note"] == "Checked with the bank."
        assert entry.details["entity"] == "b***@example.com"  # no full email in the audit log
        assert audit.verify(session).ok
        assert reviews.open_flag_count(session) == 1  # the IP flag is still open


REVIEW_ERRORS = [
    ("support may not review", Actor("sam", "support"), "confirm", "ok", PermissionDenied),
    ("a note is required", Actor("fiona", "finance"), "dismiss", "   ", reviews.ReviewError),
    ("unknown decision", Actor("fiona", "finance"), "ignore", "ok", reviews.ReviewError),
]


@pytest.mark.parametrize(
    ("actor", "decision", "note", "error"),
    [c[1:] for c in REVIEW_ERRORS],
    ids=[c[0] for c in REVIEW_ERRORS],
)
def test_review_refusals(
    sqlite_engine: Engine, actor: Actor, decision: Any, note: str, error: type[Exception]
) -> None:
    flag_id = _flag(sqlite_engine)
    with pytest.raises(error), session_scope(sqlite_engine) as session:
        reviews.review(session, actor, flag_id, decision, note)
    with session_scope(sqlite_engine, write=False) as session:
        assert session.get_one(RiskFlag, flag_id).status == "open"
        assert session.execute(select(func.count()).select_from(AuditEntry)).scalar_one() == 0


def test_a_flag_is_reviewed_once_and_reopened_by_new_failures(sqlite_engine: Engine) -> None:
    flag_id = _flag(sqlite_engine)
    with session_scope(sqlite_engine) as session:
        reviews.review(session, Actor("ada", "admin"), flag_id, "dismiss", "Known customer.")
    with (
        pytest.raises(reviews.ReviewError, match="already dismissed"),
        session_scope(sqlite_engine) as session,
    ):
        reviews.review(session, Actor("fiona", "finance"), flag_id, "confirm", "No.")
    ctx = Context(on_attempt=(hook.attempt_hook(RULES),))
    more = replace(
        Attempt("ch_rev9", datetime.fromtimestamp(START, UTC) + timedelta(minutes=5)),
        email="buyer@example.com",
    )
    with session_scope(sqlite_engine) as session:
        record_attempt(session, _values(more), {"id": "evt_more", "type": "charge.failed"}, ctx)
    with session_scope(sqlite_engine, write=False) as session:
        flag = session.get_one(RiskFlag, flag_id)
        assert (flag.status, flag.failures, flag.note) == ("open", 5, "Known customer.")


@pytest.mark.postgres
def test_concurrent_deliveries_for_one_entity(pg_engine: Engine) -> None:
    """Deliveries for one card applied concurrently: each waits for the entity's lock, so none
    misses another's attempt and no two flags overlap."""
    ctx = webhook_context(load_settings())
    events = [
        failed_charge(START + i * 300, fingerprint="fpRACE", client_ip=f"198.51.100.{i % 2}")
        for i in range(12)
    ]
    barrier = threading.Barrier(4)

    def worker(share: list[dict[str, Any]]) -> list[int]:
        barrier.wait()
        return [deliver(pg_engine, evt, ctx).status for evt in share]

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(worker, [events[i::4] for i in range(4)]))
    assert all(status == 200 for share in statuses for status in share)
    flags = stored_flags(pg_engine)
    assert flags == detected(pg_engine)
    assert [f[5] for f in flags if f[0] == "card"] == [12]
