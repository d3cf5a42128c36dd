"""Alerts: spike rules, one alert per condition per window, Slack-compatible delivery to a
loopback HTTP server with retries, nothing sent without a URL; Prometheus metrics on the
receiver expose the same signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import Engine, select
from starlette.testclient import TestClient
from werkzeug import Request, Response

from core.__main__ import main as cli
from core.console import alerts
from core.console.alerts import Rate
from core.db import make_engine, session_scope
from core.models import (
    Alert,
    AuditEntry,
    PaymentAttempt,
    RiskFlag,
    WebhookDelivery,
    WebhookRejection,
)
from core.risk import batch
from core.risk.detector import Rules
from core.settings import load_settings
from core.webhook.handlers import Context
from core.webhook.receive import receive
from receiver.app import create_app
from tests.conftest import SECRET
from tests.support import stripe_objects as so

SPIKE_CASES = [
    ("too few attempts to judge", Rate(19, 19), Rate(10, 100), False),
    ("doubled and 10 points up", Rate(20, 100), Rate(10, 100), True),
    ("doubled but only 2 points up", Rate(4, 100), Rate(2, 100), False),
    ("10 points up but not doubled", Rate(40, 100), Rate(30, 100), False),
    ("no baseline: against the 10 % default", Rate(20, 40), Rate(0, 0), True),
    ("no baseline, ordinary rate", Rate(3, 40), Rate(0, 5), False),
    ("exactly at the minimum count", Rate(10, 20), Rate(5, 100), True),
]


@pytest.mark.parametrize(
    ("current", "baseline", "fires"), [c[1:] for c in SPIKE_CASES], ids=[c[0] for c in SPIKE_CASES]
)
def test_spike_rule(current: Rate, baseline: Rate, fires: bool) -> None:
    assert alerts.is_spike(current, baseline) is fires


def test_windows_are_aligned() -> None:
    now = datetime(2026, 11, 2, 9, 44, 59, tzinfo=UTC)
    assert alerts.window_start(now) == datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    assert alerts.window_start(now + timedelta(seconds=1)) == datetime(
        2026, 11, 2, 9, 45, tzinfo=UTC
    )


# --- Helpers ----------------------------------------------------------------------------------


def make_flag(engine: Engine, fingerprint: str = "fpALERT") -> int:
    base = datetime.now(UTC) - timedelta(hours=2)
    with session_scope(engine) as session:
        for i in range(4):
            session.add(
                PaymentAttempt(
                    id=f"ch_{fingerprint}{i}",
                    outcome="failed",
                    created=base + timedelta(minutes=i),
                    card_fingerprint=fingerprint,
                )
            )
        session.flush()
        result = batch.detect_period(session, Rules())
        (flag_id,) = result.changes.created
        incident_id = session.get(RiskFlag, flag_id).incident_id  # type: ignore[union-attr]
        assert incident_id is not None
        return int(incident_id)


def add_attempts(
    engine: Engine, now: datetime, *, failed: int, succeeded: int, ago: timedelta
) -> None:
    with session_scope(engine) as session:
        for i in range(failed + succeeded):
            session.add(
                PaymentAttempt(
                    id=f"ch_rate{ago.total_seconds():.0f}_{i}",
                    outcome="failed" if i < failed else "succeeded",
                    created=now - ago - timedelta(seconds=i),
                )
            )


def run(engine: Engine, url: str | None, now: datetime | None = None) -> alerts.Report:
    sleeps: list[float] = []
    settings = load_settings(alert_webhook_url=url)
    return alerts.run(engine, settings, now=now, sleep=sleeps.append)


def posted_texts(server: HTTPServer) -> list[str]:
    return [json.loads(req.get_data())["text"] for req, _resp in server.log]


def audit_actions(engine: Engine) -> list[str]:
    with session_scope(engine, write=False) as session:
        return list(session.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars())


# --- Delivery ---------------------------------------------------------------------------------


def test_new_flag_is_posted_once(engine: Engine, httpserver: HTTPServer) -> None:
    flag_id = make_flag(engine)
    httpserver.expect_request("/hooks/alerts", method="POST").respond_with_data("ok")
    url = httpserver.url_for("/hooks/alerts")
    report = run(engine, url)
    assert report.raised == [f"risk_incident:{flag_id}"]
    assert report.delivered == [f"risk_incident:{flag_id}"]
    (text,) = posted_texts(httpserver)
    # Issue 14: the alert names the incident and links to it.
    assert text.startswith(f"Risk incident #{flag_id}: burst of failed payments across 1 flags")
    assert text.endswith(f"Review it: /risk?incident={flag_id}")
    request, _ = httpserver.log[0]
    assert request.headers["Content-Type"] == "application/json"
    # Later runs in the same window (and after it: a flag is alerted once) post nothing more.
    assert run(engine, url).raised == []
    assert run(engine, url, datetime.now(UTC) + timedelta(hours=1)).delivered == []
    assert len(httpserver.log) == 1
    assert audit_actions(engine) == ["alert.raised", "alert.delivered"]
    with session_scope(engine, write=False) as session:
        alert = session.execute(select(Alert)).scalar_one()
        assert alert.delivered_at is not None
        assert alert.delivery_attempts == 1


def test_delivery_is_retried_with_backoff(sqlite_engine: Engine, httpserver: HTTPServer) -> None:
    make_flag(sqlite_engine)
    answers = iter([503, 500, 200])

    def handler(_request: Request) -> Response:
        return Response("", status=next(answers))

    httpserver.expect_request("/hook").respond_with_handler(handler)
    sleeps: list[float] = []
    report = alerts.run(
        sqlite_engine,
        load_settings(alert_webhook_url=httpserver.url_for("/hook")),
        sleep=sleeps.append,
    )
    assert len(report.delivered) == 1
    assert len(httpserver.log) == 3
    assert sleeps == [0.5, 1.0]
    assert len(set(posted_texts(httpserver))) == 1  # the same alert, retried


def test_failed_delivery_is_retried_by_the_next_run(
    sqlite_engine: Engine, httpserver: HTTPServer
) -> None:
    make_flag(sqlite_engine)
    status = {"code": 502}
    httpserver.expect_request("/hook").respond_with_handler(
        lambda _r: Response("", status=status["code"])
    )
    url = httpserver.url_for("/hook")
    first = run(sqlite_engine, url)
    assert (first.delivered, len(first.failed)) == ([], 1)
    assert len(httpserver.log) == alerts.POST_TRIES
    status["code"] = 204
    second = run(sqlite_engine, url)
    assert len(second.delivered) == 1
    assert second.raised == []  # the same alert, not a second one
    assert run(sqlite_engine, url).delivered == []
    assert len(httpserver.log) == alerts.POST_TRIES + 1
    assert audit_actions(sqlite_engine) == [
        "alert.raised",
        "alert.delivery_failed",
        "alert.delivered",
    ]


def test_a_rejected_post_is_not_repeated(sqlite_engine: Engine, httpserver: HTTPServer) -> None:
    make_flag(sqlite_engine)
    httpserver.expect_request("/hook").respond_with_data("no such hook", status=404)
    report = run(sqlite_engine, httpserver.url_for("/hook"))
    assert len(report.failed) == 1
    assert len(httpserver.log) == 1
    with session_scope(sqlite_engine, write=False) as session:
        assert session.execute(select(Alert.last_error)).scalar_one() == "HTTP 404"


def test_an_unreachable_url_fails_cleanly(sqlite_engine: Engine) -> None:
    make_flag(sqlite_engine)
    from tests.support.postgres import free_port

    report = run(sqlite_engine, f"http://127.0.0.1:{free_port()}/hook")
    assert len(report.failed) == 1
    with session_scope(sqlite_engine, write=False) as session:
        assert session.execute(select(Alert.last_error)).scalar_one() == "ConnectError"


def test_nothing_is_sent_without_a_url(
    engine: Engine, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    flag_id = make_flag(engine)
    report = run(engine, None)
    assert report.raised == [f"risk_incident:{flag_id}"]
    assert report.not_sent == 1
    assert "not sent (ALERT_WEBHOOK_URL is not set)" in report.describe()
    assert httpserver.log == []
    assert f"alert risk_incident:{flag_id}" in caplog.text  # always logged
    assert audit_actions(engine) == ["alert.raised"]  # and audited
    with session_scope(engine, write=False) as session:
        (alert,) = alerts.recent_alerts(session)
        assert alert.delivered_at is None


def test_a_claimed_alert_is_not_posted_by_a_concurrent_run(
    sqlite_engine: Engine, httpserver: HTTPServer
) -> None:
    make_flag(sqlite_engine)
    run(sqlite_engine, None)  # raised, not delivered
    httpserver.expect_request("/hook").respond_with_data("ok")
    now = datetime.now(UTC)
    with session_scope(sqlite_engine, write=False) as session:
        alert_id = session.execute(select(Alert.id)).scalar_one()
    assert alerts._claim(sqlite_engine, alert_id, now)  # another run holds the lease
    url = httpserver.url_for("/hook")
    assert alerts.deliver(sqlite_engine, url, now=now).delivered == []
    assert httpserver.log == []
    # A lease left by a run that died expires, and the alert is delivered then.
    later = now + alerts.CLAIM_LEASE + timedelta(seconds=1)
    assert len(alerts.deliver(sqlite_engine, url, now=later).delivered) == 1


def test_decline_spike_once_per_window(engine: Engine, httpserver: HTTPServer) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    add_attempts(engine, now, failed=10, succeeded=90, ago=timedelta(hours=3))  # baseline 10 %
    add_attempts(engine, now, failed=24, succeeded=6, ago=timedelta(minutes=1))  # now 80 %
    httpserver.expect_request("/hook").respond_with_data("ok")
    url = httpserver.url_for("/hook")
    assert run(engine, url, now).raised == ["decline_rate_spike"]
    assert run(engine, url, now + timedelta(seconds=30)).raised == []
    (text,) = posted_texts(httpserver)
    assert text.startswith("Decline rate spike: 80% of 30 attempts in the last 15 min")
    # The spike still shows in the next window: one more alert, for that window.
    next_window = alerts.window_start(now) + alerts.ALERT_WINDOW + timedelta(seconds=5)
    add_attempts(engine, next_window, failed=24, succeeded=6, ago=timedelta(seconds=1))
    assert run(engine, url, next_window).raised == ["decline_rate_spike"]
    assert len(httpserver.log) == 2


def test_webhook_failure_and_retry_spikes(sqlite_engine: Engine) -> None:
    now = datetime.now(UTC)
    with session_scope(sqlite_engine) as session:
        for i, outcome in enumerate(["failed"] * 15 + ["duplicate"] * 10 + ["processed"] * 5):
            session.add(
                WebhookDelivery(
                    received_at=now - timedelta(seconds=i + 1),
                    http_status=500 if outcome == "failed" else 200,
                    outcome=outcome,
                )
            )
    report = run(sqlite_engine, None, now)
    assert sorted(report.raised) == ["webhook_failure_spike", "webhook_retry_spike"]


def test_rejected_requests_count_from_their_per_minute_counters(sqlite_engine: Engine) -> None:
    """Issue 11, finding 6: rejected requests are counters per minute, not a row each (the
    delivery rows of rejections are only a sample); the failure signal still counts them all."""
    now = datetime.now(UTC)
    minute = (now - timedelta(minutes=2)).replace(second=0, microsecond=0)
    with session_scope(sqlite_engine) as session:
        session.add(
            WebhookRejection(
                minute=minute, reason="no_matching_signature", remote_addr="1.2.3.4", deliveries=40
            )
        )
        for _ in range(3):  # the sample of those 40, and 10 successes
            session.add(WebhookDelivery(received_at=minute, http_status=400, outcome="rejected"))
        for i in range(10):
            session.add(
                WebhookDelivery(
                    received_at=now - timedelta(seconds=i + 1), http_status=200, outcome="processed"
                )
            )
    with session_scope(sqlite_engine, write=False) as session:
        s = alerts.signals(session, now)
    assert (s.webhook_failures.hits, s.webhook_failures.total) == (40, 50)


# --- Prometheus -------------------------------------------------------------------------------


def scrape(db_url: str) -> dict[str, float]:
    settings = load_settings(database_url=db_url, stripe_webhook_secrets=SECRET)
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("payments_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_expose_the_same_signals(engine: Engine, db_url: str) -> None:
    make_flag(engine)
    now = datetime.now(UTC)
    add_attempts(engine, now, failed=3, succeeded=1, ago=timedelta(minutes=2))
    samples = scrape(db_url)
    assert samples["payments_signals_up"] == 1
    assert samples['payments_risk_flags_open{entity_kind="card"}'] == 1
    assert samples['payments_risk_flags_open{entity_kind="ip"}'] == 0
    assert samples['payments_decline_rate{window="900s"}'] == 0.75
    assert samples['payments_decline_events{kind="total",window="900s"}'] == 4
    assert samples['payments_webhook_events_not_applied{status="unprocessable"}'] == 0


def test_metrics_count_unprocessable_events(engine: Engine, db_url: str) -> None:
    """Issue 11: a stored unprocessable event is counted in /metrics until it is resolved."""
    evt = so.event("charge.refunded", {})  # `{}` as the object: can never be applied
    body, header = so.signed(evt, SECRET)
    outcome = receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=Context())
    assert outcome.result == "unprocessable"
    samples = scrape(db_url)
    assert samples['payments_webhook_events_not_applied{status="unprocessable"}'] == 1
    assert samples['payments_webhook_events_not_applied{status="failed"}'] == 0


def test_metrics_answer_when_the_database_cannot_be_read(tmp_path: Path) -> None:
    samples = scrape(f"sqlite:///{tmp_path}/never_migrated.db")
    assert samples["payments_signals_up"] == 0


def test_alerts_command(
    sqlite_url: str,
    sqlite_engine: Engine,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_flag(sqlite_engine)
    httpserver.expect_request("/hook").respond_with_data("ok")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", httpserver.url_for("/hook"))
    assert cli(["alerts"]) == 0
    assert "1 alerts raised, 1 delivered, 0 failed" in capsys.readouterr().out
    assert cli(["alerts", "check"]) == 0
    assert "0 alerts raised" in capsys.readouterr().out
    assert len(httpserver.log) == 1


# --- When alerting last ran (issue 14) -----------------------------------------------------------


def test_each_run_records_when_alerting_last_ran(engine: Engine) -> None:
    """Issue 14: "No alerts raised" was shown while alerting was not running at all. Every run
    of the alert job records when it ran; none recorded means it never ran."""
    with session_scope(engine, write=False) as session:
        assert alerts.last_run(session) is None
    settings = load_settings(alert_webhook_url=None)
    first = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    alerts.run(engine, settings, now=first)
    alerts.run(engine, settings, now=first + timedelta(minutes=1))
    with session_scope(engine, write=False) as session:
        last = alerts.last_run(session)
    assert last is not None and last.ok
    assert last.finished_at == first + timedelta(minutes=1)
    assert "0 alerts raised" in last.summary


def test_the_command_records_its_run(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: what cron (and `make run`) starts is what the Overview reads."""
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    assert cli(["alerts"]) == 0
    engine = make_engine(sqlite_url)
    with session_scope(engine, write=False) as session:
        last = alerts.last_run(session)
    engine.dispose()
    assert last is not None
    assert datetime.now(UTC) - last.finished_at < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("minutes_ago", "overdue"),
    [(None, True), (1, False), (4, False), (5, True), (600, True)],
)
def test_alerting_is_overdue_after_twice_its_interval(
    minutes_ago: int | None, overdue: bool
) -> None:
    now = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    last = (
        None
        if minutes_ago is None
        else alerts.LastRun(now - timedelta(minutes=minutes_ago), True, "0 alerts raised")
    )
    assert alerts.is_overdue(last, now, timedelta(minutes=2)) is overdue
