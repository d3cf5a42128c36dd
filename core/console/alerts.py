"""Alerts: a new risk incident, a decline-rate spike, a webhook failure or retry spike.

`run()` is called by `python -m core alerts` (cron, every few minutes), by `python -m core
bursts`, and by anything else that runs periodically: never on the webhook path. A flag raised
while a webhook is applied is only a row there (the webhook answers without waiting on any
network); the next run finds it and alerts. Each run:

1. evaluates the conditions and records each firing one as an `alerts` row, whose UNIQUE
   (condition, window_start) makes it at most one alert per condition per window however many
   runs overlap; a new row is logged and written to the audit log in the same transaction;
2. posts every undelivered alert to ALERT_WEBHOOK_URL (a Slack-compatible `{"text": ...}`),
   with a short timeout and a few retries with backoff on errors and 5xx answers. A row is
   claimed (a lease in `claimed_at`) before posting, so two concurrent runs never post the same
   alert; it is marked delivered on a 2xx. With no URL set nothing is sent; rows stay visible
   on the Overview and in the log.

Spike rule: over the last ALERT_WINDOW, at least MIN_EVENTS events, a rate at least FACTOR
times the baseline (the preceding BASELINE period) and at least MIN_INCREASE above it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import SYSTEM
from core.db import insert_ignore, session_scope
from core.models import (
    Alert,
    JobRun,
    PaymentAttempt,
    RiskFlag,
    RiskIncident,
    WebhookDelivery,
    WebhookRejection,
    utcnow,
)
from core.settings import Settings
from core.text import slack

log = logging.getLogger(__name__)

ALERT_WINDOW = timedelta(minutes=15)
BASELINE = timedelta(hours=24)
MIN_EVENTS = 20
FACTOR = 2.0
MIN_INCREASE = 0.10
DEFAULT_BASELINE_RATE = 0.10  # assumed when the baseline has too few events to judge
NEW_FLAG_LOOKBACK = timedelta(days=2)
POST_TIMEOUT = 5.0  # seconds, per try
POST_TRIES = 3
BACKOFF = 0.5  # seconds, doubled after each failed try
CLAIM_LEASE = timedelta(minutes=2)  # longer than POST_TRIES tries with their backoff
MAX_DELIVERY_ATTEMPTS = 12  # posts over all runs before an alert is left undelivered


# --- Pure rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0


def is_spike(
    current: Rate,
    baseline: Rate,
    *,
    min_events: int = MIN_EVENTS,
    factor: float = FACTOR,
    min_increase: float = MIN_INCREASE,
) -> bool:
    if current.total < min_events:
        return False
    base = baseline.value if baseline.total >= min_events else DEFAULT_BASELINE_RATE
    return current.value >= base * factor and current.value - base >= min_increase


def window_start(now: datetime, length: timedelta = ALERT_WINDOW) -> datetime:
    """The start of the fixed window `now` falls in (windows are aligned on the epoch)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((now - epoch) // length) * length


# --- Signals (also exported to Prometheus by core.prom) ---------------------------------------


@dataclass(frozen=True)
class Signals:
    declines: Rate
    declines_baseline: Rate
    webhook_failures: Rate
    webhook_failures_baseline: Rate
    webhook_retries: Rate
    webhook_retries_baseline: Rate
    open_flags: dict[str, int] = field(default_factory=dict)  # entity kind -> count


def _attempt_rates(session: Session, lo: datetime, hi: datetime) -> Rate:
    total, failed = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((PaymentAttempt.outcome == "failed", 1), else_=0)), 0),
        ).where(PaymentAttempt.created > lo, PaymentAttempt.created <= hi)
    ).one()
    return Rate(int(failed), int(total))


def _delivery_rates(session: Session, lo: datetime, hi: datetime) -> tuple[Rate, Rate]:
    failed = WebhookDelivery.outcome.in_(("failed", "unprocessable"))
    total, failures, retries = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((failed, 1), else_=0)), 0),
            func.coalesce(func.sum(case((WebhookDelivery.outcome == "duplicate", 1), else_=0)), 0),
        ).where(
            WebhookDelivery.received_at > lo,
            WebhookDelivery.received_at <= hi,
            WebhookDelivery.outcome != "rejected",  # a sample only: counted per minute below
        )
    ).one()
    # Rejected requests, counted per minute (core.webhook.receive): by the minute's start.
    rejected = session.execute(
        select(func.coalesce(func.sum(WebhookRejection.deliveries), 0)).where(
            WebhookRejection.minute > lo, WebhookRejection.minute <= hi
        )
    ).scalar_one()
    total, failures = int(total) + int(rejected), int(failures) + int(rejected)
    return Rate(failures, total), Rate(int(retries), total)


def open_flags_by_kind(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(RiskFlag.entity_kind, func.count())
        .where(RiskFlag.status == "open")
        .group_by(RiskFlag.entity_kind)
    ).all()
    return {kind: int(n) for kind, n in rows}


def signals(session: Session, now: datetime | None = None) -> Signals:
    now = now or utcnow()
    start = now - ALERT_WINDOW
    base_start = start - BASELINE
    failures, retries = _delivery_rates(session, start, now)
    base_failures, base_retries = _delivery_rates(session, base_start, start)
    return Signals(
        declines=_attempt_rates(session, start, now),
        declines_baseline=_attempt_rates(session, base_start, start),
        webhook_failures=failures,
        webhook_failures_baseline=base_failures,
        webhook_retries=retries,
        webhook_retries_baseline=base_retries,
        open_flags=open_flags_by_kind(session),
    )


# --- Raising ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    condition: str
    window_start: datetime
    message: str


def _pct(rate: Rate) -> str:
    return f"{rate.value:.0%} of {rate.total}"


def firing_conditions(session: Session, now: datetime, link_base: str = "") -> list[Firing]:
    firings: list[Firing] = []
    s = signals(session, now)
    start = window_start(now)
    minutes = int(ALERT_WINDOW.total_seconds() // 60)
    spikes = [
        ("decline_rate_spike", "Decline rate", s.declines, s.declines_baseline, "attempts"),
        (
            "webhook_failure_spike",
            "Webhook failures",
            s.webhook_failures,
            s.webhook_failures_baseline,
            "deliveries",
        ),
        (
            "webhook_retry_spike",
            "Webhook retries",
            s.webhook_retries,
            s.webhook_retries_baseline,
            "deliveries",
        ),
    ]
    for condition, label, current, baseline, unit in spikes:
        if is_spike(current, baseline):
            firings.append(
                Firing(
                    condition,
                    start,
                    f"{label} spike: {_pct(current)} {unit} in the last {minutes} min "
                    f"(baseline {_pct(baseline)} over the previous 24 h).",
                )
            )
    firings += incident_firings(session, now, link_base)
    return firings


_WHAT = {"burst": "burst of failed payments", "card_testing": "card testing"}


def incident_link(incident_id: int, base: str = "") -> str:
    """Where the incident is reviewed: the Risk page opened on it (DASHBOARD_URL in front)."""
    return f"{base.rstrip('/')}/risk?incident={incident_id}"


def incident_firings(session: Session, now: datetime, link_base: str = "") -> list[Firing]:
    """One alert per new open incident (not per flag: one attack raises up to six), however
    much it grows later; the message names the incident and links to it."""
    found = session.execute(
        select(RiskIncident)
        .where(RiskIncident.status == "open", RiskIncident.created_at >= now - NEW_FLAG_LOOKBACK)
        .order_by(RiskIncident.id)
    ).scalars()
    firings = []
    for incident in found:
        flags = (
            session.execute(
                select(RiskFlag).where(RiskFlag.incident_id == incident.id).order_by(RiskFlag.id)
            )
            .scalars()
            .all()
        )
        if not flags:
            continue
        patterns = sorted({_WHAT.get(f.pattern, f.pattern) for f in flags})
        kinds = sorted({f.entity_kind.replace("_", " ") for f in flags})
        firings.append(
            Firing(
                f"risk_incident:{incident.id}",
                incident.created_at,
                f"Risk incident #{incident.id}: {' and '.join(patterns)} across "
                f"{len(flags)} flags ({', '.join(kinds)}), up to "
                f"{max(f.failures for f in flags)} failed attempts between "
                f"{incident.first_seen:%Y-%m-%d %H:%M} and {incident.last_seen:%H:%M} UTC. "
                f"Review it: {incident_link(incident.id, link_base)}",
            )
        )
    return firings


def raise_alerts(
    session: Session, now: datetime | None = None, link_base: str = ""
) -> list[Firing]:
    """Record every firing condition not yet alerted in its window; returns the new ones."""
    now = now or utcnow()
    raised = []
    for firing in firing_conditions(session, now, link_base):
        inserted = insert_ignore(
            session,
            Alert,
            {
                "condition": firing.condition,
                "window_start": firing.window_start,
                "raised_at": now,
                "message": firing.message,
                "delivery_attempts": 0,
            },
            ["condition", "window_start"],
        )
        if inserted:
            raised.append(firing)
            log.warning("alert %s: %s", firing.condition, firing.message)
            audit.record(
                session,
                SYSTEM,
                "alert.raised",
                target=firing.condition,
                details={"window_start": firing.window_start, "message": firing.message},
                at=now,
            )
    return raised


# --- Delivering -------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """Every try to post an alert failed; the message is safe to log."""


def post(
    url: str,
    text: str,
    *,
    client: httpx.Client | None = None,
    tries: int = POST_TRIES,
    backoff: float = BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Post `{"text": text}`; retried on network errors and 5xx. Returns the tries used.

    `text` is text: Slack's mrkdwn escapes (`&`, `<`, `>`) and bidi controls are applied here,
    the one place an alert leaves, so no data in a message becomes a link or a mention."""
    own = client is None
    client = client or httpx.Client(timeout=POST_TIMEOUT, follow_redirects=False)
    problem = "no try made"
    try:
        for attempt in range(1, tries + 1):
            try:
                response = client.post(url, json={"text": slack(text)})
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.is_success:
                    return attempt
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the request itself is wrong: retrying repeats it
            if attempt < tries:
                sleep(backoff * 2 ** (attempt - 1))
    finally:
        if own:
            client.close()
    raise DeliveryFailed(problem)


@dataclass
class Report:
    raised: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_sent: int = 0

    def describe(self) -> str:
        parts = [f"{len(self.raised)} alerts raised"]
        if self.delivered or self.failed:
            parts.append(f"{len(self.delivered)} delivered, {len(self.failed)} failed")
        if self.not_sent:
            parts.append(f"{self.not_sent} not sent (ALERT_WEBHOOK_URL is not set)")
        return ", ".join(parts)


def _claim(engine: Engine, alert_id: int, now: datetime) -> bool:
    with session_scope(engine) as session:
        result: Any = session.execute(
            update(Alert)
            .where(
                Alert.id == alert_id,
                Alert.delivered_at.is_(None),
                (Alert.claimed_at.is_(None)) | (Alert.claimed_at < now - CLAIM_LEASE),
            )
            .values(claimed_at=now)
        )
        return bool(result.rowcount)


def deliver(
    engine: Engine,
    url: str | None,
    *,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Post every undelivered recent alert once (see the module docstring)."""
    now = now or utcnow()
    report = Report()
    with session_scope(engine, write=False) as session:
        pending = list(
            session.execute(
                select(Alert.id, Alert.condition, Alert.message)
                .where(
                    Alert.delivered_at.is_(None),
                    Alert.raised_at >= now - NEW_FLAG_LOOKBACK,
                    Alert.delivery_attempts < MAX_DELIVERY_ATTEMPTS,
                )
                .order_by(Alert.id)
            ).all()
        )
    if not url:
        report.not_sent = len(pending)
        return report
    for alert_id, condition, message in pending:
        if not _claim(engine, alert_id, now):
            continue  # another run is posting it
        try:
            tries = post(url, message, client=client, sleep=sleep)
            error = None
        except DeliveryFailed as exc:
            tries, error = POST_TRIES, str(exc)
        with session_scope(engine) as session:
            row = session.get_one(Alert, alert_id)
            row.delivery_attempts += tries
            row.claimed_at = None
            if error is None:
                row.delivered_at = utcnow()
                row.last_error = None
                report.delivered.append(condition)
            else:
                row.last_error = error
                report.failed.append(condition)
                log.error("alert %s not delivered: %s", condition, error)
            audit.record(
                session,
                SYSTEM,
                "alert.delivered" if error is None else "alert.delivery_failed",
                target=condition,
                details={"tries": tries, "error": error},
            )
    return report


def run(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Raise what fires, then deliver what is pending; record that the job ran (`job_runs`),
    failed or not, so the Overview can tell a quiet system from one where alerting is not
    running. Never called on the webhook path."""
    started = now or utcnow()
    try:
        with session_scope(engine) as session:
            raised = raise_alerts(session, now, settings.dashboard_url or "")
        report = deliver(engine, settings.alert_webhook_url, now=now, client=client, sleep=sleep)
    except Exception as exc:
        _record_run(engine, started, now, ok=False, summary=f"failed: {type(exc).__name__}")
        raise
    report.raised = [f.condition for f in raised]
    _record_run(engine, started, now, ok=not report.failed, summary=report.describe())
    return report


# --- When the job last ran ----------------------------------------------------------------------

ALERT_JOB = "alerts"


def _record_run(
    engine: Engine, started: datetime, now: datetime | None, *, ok: bool, summary: str
) -> None:
    values = {"started_at": started, "finished_at": now or utcnow(), "ok": ok, "summary": summary}
    with session_scope(engine) as session:
        if not insert_ignore(session, JobRun, {"job": ALERT_JOB, **values}, ["job"]):
            session.execute(update(JobRun).where(JobRun.job == ALERT_JOB).values(**values))


@dataclass(frozen=True)
class LastRun:
    """The alert job's latest run: when it ended, whether it went through, what it did."""

    finished_at: datetime
    ok: bool
    summary: str


def last_run(session: Session) -> LastRun | None:
    """The alert job's latest run, or None if it never ran against this database."""
    row = session.get(JobRun, ALERT_JOB)
    return None if row is None else LastRun(row.finished_at, row.ok, row.summary)


def is_overdue(last: LastRun | None, now: datetime, interval: timedelta) -> bool:
    """Whether alerting has missed its schedule: never ran, or no run for twice `interval`."""
    return last is None or now - last.finished_at > 2 * interval


def recent_alerts(session: Session, limit: int = 20) -> list[Alert]:
    """The latest alerts, newest first, for the Overview."""
    return list(
        session.execute(
            select(Alert).order_by(Alert.raised_at.desc(), Alert.id.desc()).limit(limit)
        ).scalars()
    )
