"""Find what the webhooks missed and repair it.

`reconcile` lists Stripe's events of the last days (Stripe keeps 30) and applies every one
missing from `stripe_events` (or stored as failed) through the same path as the webhook
(`core.webhook.receive.apply_event`, source "reconcile"), one transaction per event, so a webhook
delivering the same event at the same moment is harmless: the unique event id lets one of them
apply it. It then looks for paid Checkout Sessions with no paid order and repairs them through
the same handler. A second run finds nothing to do.

Replaying one stored event is core.console.replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, require
from core.console import jobs
from core.console.stripe_api import API_VERSION, StripeApi
from core.db import session_scope
from core.models import (
    Fulfillment,
    Order,
    StripeEvent,
    utcnow,
)
from core.webhook.handlers import HANDLERS, Context
from core.webhook.receive import apply_event, record_failure, refused_value, safe_error
from core.webhook.signature import Rejection, check_event_shape

log = logging.getLogger(__name__)


RETENTION_DAYS = 30  # Stripe lists events of the last 30 days


ID_CHUNK = 500


REPAIR_PREFIX = "evt_reconcile_"


@dataclass
class ReconcileReport:
    since: datetime
    events_seen: int = 0
    delivery_failed: int = 0  # events Stripe says it could not deliver to some endpoint
    applied: list[str] = field(default_factory=list)
    raced: list[str] = field(default_factory=list)  # applied meanwhile by someone else
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sessions_seen: int = 0
    sessions_repaired: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.applied or self.failed or self.sessions_repaired)

    def lines(self) -> list[str]:
        out = [
            f"Stripe events since {self.since:%Y-%m-%d %H:%M} UTC: {self.events_seen} "
            f"({self.delivery_failed} with failed deliveries)",
            f"missing events applied: {len(self.applied)}",
        ]
        out += [f"  applied {event_id}" for event_id in self.applied]
        if self.raced:
            out.append(f"applied meanwhile by a webhook: {len(self.raced)}")
        out += [f"  FAILED {event_id}: {error}" for event_id, error in self.failed]
        out += [f"  skipped {event_id}: {why}" for event_id, why in self.skipped]
        out.append(
            f"paid Checkout Sessions checked: {self.sessions_seen}, "
            f"repaired: {len(self.sessions_repaired)}"
        )
        out += [f"  repaired {session_id}" for session_id in self.sessions_repaired]
        if self.nothing_to_do:
            out.append("nothing to do: our tables agree with Stripe")
        return out


def _chunks(items: list[str], size: int = ID_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _settled_ids(session: Session, ids: list[str]) -> set[str]:
    """Events we hold and have applied (or deliberately ignored)."""
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(
            session.execute(
                select(StripeEvent.id).where(
                    StripeEvent.id.in_(chunk), StripeEvent.status != "failed"
                )
            ).scalars()
        )
    return found


def mark_reconciled(session: Session, event_id: str) -> None:
    """A fulfillment that this reconciliation caused says so."""
    session.execute(
        update(Fulfillment)
        .where(Fulfillment.event_id == event_id, Fulfillment.source == "webhook")
        .values(source="reconcile")
    )


def _apply(engine: Engine, event: dict[str, Any], ctx: Context, report: ReconcileReport) -> None:
    try:
        with session_scope(engine) as session:
            result = apply_event(session, event, ctx, "reconcile")
            if result != "duplicate":
                mark_reconciled(session, event["id"])
    except Exception as exc:
        error = safe_error(exc)
        log.error("reconcile: event %s failed: %s", event["id"], error)
        report.failed.append((event["id"], error))
        status = "unprocessable" if refused_value(exc) else "failed"
        with session_scope(engine) as session:
            record_failure(session, event, error, ctx.now(), status=status)
        return
    if result == "unprocessable":  # stored with its reason (see the Webhooks page)
        report.skipped.append((event["id"], "unprocessable"))
        return
    (report.raced if result == "duplicate" else report.applied).append(event["id"])


def _repair_event(checkout: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A stand-in `checkout.session.completed` for a paid session whose event we cannot get."""
    created = checkout.get("created")
    return {
        "id": f"{REPAIR_PREFIX}{checkout['id']}"[:255],
        "object": "event",
        "type": "checkout.session.completed",
        "api_version": None,
        "created": created if isinstance(created, int) else int(now.timestamp()),
        "livemode": bool(checkout.get("livemode")),
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": checkout},
        "reconciled": True,  # marks that Stripe did not send this event; we built it
    }


def _unpaid_sessions(session: Session, ids: list[str]) -> set[str]:
    """Of these Checkout Session ids, those with no paid order in our tables."""
    paid: set[str] = set()
    for chunk in _chunks(ids):
        paid.update(
            str(cs)
            for cs in session.execute(
                select(Order.checkout_session_id).where(
                    Order.checkout_session_id.in_(chunk), Order.paid_at.is_not(None)
                )
            ).scalars()
        )
    return set(ids) - paid


Progress = Callable[[str, int, int | None], None]  # (step, done, total or None)


def _no_progress(step: str, done: int, total: int | None) -> None:
    return None


def _missing_events(
    engine: Engine, client: StripeApi, gte: int, report: ReconcileReport, progress: Progress
) -> list[dict[str, Any]]:
    """Stripe's events since `gte` that we lack (or hold as failed), oldest first. Events
    stream page by page and only the missing ones are kept; no transaction is open during a
    network call."""
    missing: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []

    def keep_missing() -> None:
        with session_scope(engine, write=False) as session:
            settled = _settled_ids(session, [str(e.get("id")) for e in batch])
        missing.extend(e for e in batch if e.get("id") not in settled)
        batch.clear()
        progress("listing Stripe's events", report.events_seen, None)

    for event in client.list_events(created_gte=gte):
        report.events_seen += 1
        batch.append(event)
        if len(batch) >= ID_CHUNK:
            keep_missing()
    keep_missing()
    report.delivery_failed = sum(
        1 for _ in client.list_events(created_gte=gte, delivery_success=False)
    )
    return sorted(missing, key=lambda e: (e.get("created") or 0, str(e.get("id"))))


def _apply_missing(
    engine: Engine,
    missing: list[dict[str, Any]],
    ctx: Context,
    report: ReconcileReport,
    progress: Progress,
) -> None:
    """Apply each missing event through the webhook path, one transaction each."""
    for done, event in enumerate(missing, 1):
        try:
            check_event_shape(event)
        except Rejection as rejection:
            report.skipped.append((str(event.get("id")), rejection.reason))
        else:
            _apply(engine, event, ctx, report)
        progress("applying missing events", done, len(missing))


def _repair_sessions(
    engine: Engine,
    client: StripeApi,
    gte: int,
    ctx: Context,
    report: ReconcileReport,
    now: datetime,
    progress: Progress,
) -> None:
    """Repair paid Checkout Sessions that have no paid order, through the same handler."""
    progress("listing paid Checkout Sessions", 0, None)
    paid = [
        s
        for s in client.list_checkout_sessions(created_gte=gte)
        if s.get("payment_status") == "paid" and isinstance(s.get("id"), str)
    ]
    report.sessions_seen = len(paid)
    with session_scope(engine, write=False) as session:
        unpaid = _unpaid_sessions(session, [s["id"] for s in paid])
    repairs = [s for s in paid if s["id"] in unpaid]
    for done, checkout in enumerate(repairs, 1):
        before = len(report.applied)
        _apply(engine, _repair_event(checkout, now), ctx, report)
        if len(report.applied) > before:
            report.applied.pop()
            report.sessions_repaired.append(checkout["id"])
        progress("repairing paid sessions", done, len(repairs))


def reconcile(
    engine: Engine,
    client: StripeApi,
    ctx: Context,
    actor: Actor,
    *,
    days: int = RETENTION_DAYS,
    now: datetime | None = None,
    progress: Progress = _no_progress,
) -> ReconcileReport:
    """Apply Stripe's events we lack, repair paid sessions without a paid order; report.
    `progress` is told each step as it goes. Use `run_once` to hold the job lock."""
    if not actor.is_system:
        require(actor, "events.replay")
    if not 1 <= days <= RETENTION_DAYS:
        raise ValueError(f"days must be between 1 and {RETENTION_DAYS} (Stripe keeps 30 days)")
    now = now or utcnow()
    since = now - timedelta(days=days)
    gte = int(since.timestamp())
    report = ReconcileReport(since)
    missing = _missing_events(engine, client, gte, report, progress)
    _apply_missing(engine, missing, ctx, report, progress)
    _repair_sessions(engine, client, gte, ctx, report, now, progress)
    with session_scope(engine) as session:
        audit.record(
            session,
            actor,
            "events.reconcile",
            f"last {days} days",
            {
                "events_seen": report.events_seen,
                "applied": report.applied,
                "failed": [event_id for event_id, _ in report.failed],
                "sessions_repaired": report.sessions_repaired,
            },
        )
    return report


JOB = "reconcile"


class ReconcileBusy(RuntimeError):
    """Another reconciliation is running (in any session or process); the message says whose."""


def start(engine: Engine, actor: Actor, token: str, *, days: int) -> jobs.Claimed:
    """Take the reconciliation lock for the request `token`. "started": the caller runs
    `run_claimed`; "already": this request started it before, nothing to do. Raises
    ReconcileBusy when someone else's run holds the lock."""
    if not actor.is_system:
        require(actor, "events.replay")
    if not 1 <= days <= RETENTION_DAYS:
        raise ValueError(f"days must be between 1 and {RETENTION_DAYS} (Stripe keeps 30 days)")
    claimed, state = jobs.claim(engine, JOB, actor.username, token)
    if claimed == "busy":
        raise ReconcileBusy(
            f"A reconciliation is already running ({state.describe()}, "
            f"{state.step or 'starting'}); it runs once at a time."
        )
    return claimed


def run_claimed(
    engine: Engine,
    client: StripeApi,
    ctx: Context,
    actor: Actor,
    token: str,
    *,
    days: int,
    progress: Progress = _no_progress,
) -> ReconcileReport | None:
    """Run the reconciliation whose lock `token` holds, recording progress for every session,
    then release the lock with the report (None when it failed; the error is kept)."""

    def report_progress(step: str, done: int, total: int | None) -> None:
        jobs.progress(engine, JOB, token, step, done, total)
        progress(step, done, total)

    try:
        report = reconcile(engine, client, ctx, actor, days=days, progress=report_progress)
    except Exception as exc:
        message = getattr(exc, "message", None) or safe_error(exc)
        jobs.finish(engine, JOB, token, ok=False, result=[f"failed: {message}"])
        log.error("reconcile failed: %s", message)
        return None
    jobs.finish(engine, JOB, token, ok=not report.failed, result=report.lines())
    return report


def run_once(
    engine: Engine,
    client: StripeApi,
    ctx: Context,
    actor: Actor,
    token: str,
    *,
    days: int = RETENTION_DAYS,
    progress: Progress = _no_progress,
) -> ReconcileReport | None:
    """Take the lock, run, release: None when this request had already run it. Raises
    ReconcileBusy while another run holds the lock."""
    if start(engine, actor, token, days=days) == "already":
        return None
    return run_claimed(engine, client, ctx, actor, token, days=days, progress=progress)


PENDING_DAYS = 3  # Stripe retries a delivery for up to three days


@dataclass(frozen=True)
class EndpointStatus:
    id: str
    url: str
    status: str
    api_version: str | None  # None: the account's default version
    version_matches: bool
    missing_events: tuple[str, ...]  # event types we handle that it does not send

    @property
    def healthy(self) -> bool:
        return self.status == "enabled" and self.version_matches and not self.missing_events


@dataclass(frozen=True)
class PendingEvent:
    id: str
    type: str
    created: datetime
    pending_webhooks: int


@dataclass(frozen=True)
class EndpointHealth:
    our_version: str
    endpoints: tuple[EndpointStatus, ...]
    pending: tuple[PendingEvent, ...]
    standin: bool


def endpoint_status(endpoint: dict[str, Any], our_version: str) -> EndpointStatus:
    enabled = endpoint.get("enabled_events") or []
    handled = sorted(HANDLERS)
    missing = () if "*" in enabled else tuple(t for t in handled if t not in enabled)
    version = endpoint.get("api_version")
    return EndpointStatus(
        id=str(endpoint.get("id")),
        url=str(endpoint.get("url")),
        status=str(endpoint.get("status")),
        api_version=version if isinstance(version, str) else None,
        version_matches=version == our_version,
        missing_events=missing,
    )


def endpoint_health(
    client: StripeApi, actor: Actor, *, now: datetime | None = None, days: int = PENDING_DAYS
) -> EndpointHealth:
    """Stripe's endpoints for this account against what we handle, and events Stripe is
    still trying to deliver."""
    require(actor, "metrics.view")
    now = now or utcnow()
    endpoints = tuple(endpoint_status(e, API_VERSION) for e in client.list_webhook_endpoints())
    pending = tuple(
        PendingEvent(
            str(e["id"]),
            str(e.get("type")),
            datetime.fromtimestamp(int(e.get("created") or 0), tz=now.tzinfo),
            int(e.get("pending_webhooks") or 0),
        )
        for e in client.list_events(created_gte=int((now - timedelta(days=days)).timestamp()))
        if isinstance(e.get("pending_webhooks"), int) and e["pending_webhooks"] > 0
    )
    return EndpointHealth(API_VERSION, endpoints, pending, client.is_standin)
