"""Retention: old delivery rows, rejected-request samples and raw event bodies go away.

The policy comes from configuration (RETENTION_* settings, defaults in the README) and is
applied by `python -m core retention` (a dry run unless `--apply`; run it daily from cron).
An applied run is audited. What money depends on is never touched: event rows (only their raw
body is replaced by a stub, and only once the event is applied or ignored: a failed or
unprocessable event keeps its body for the replay), orders, attempts, fulfillments, the audit
log. A second run with the same clock changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, select, update
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, require
from core.db import session_scope
from core.models import AuditEntry, StripeEvent, WebhookDelivery, WebhookRejection, utcnow
from core.settings import Settings

ACTION = "retention.apply"
PRUNED_BODY: dict[str, Any] = {"pruned": True}  # what an event's payload holds once pruned
SETTLED = ("processed", "ignored")


@dataclass(frozen=True)
class Policy:
    """Ages in days past which rows go (or, for event bodies, are replaced by a stub)."""

    deliveries_days: int = 90  # delivery rows and rejected-request counters
    rejection_samples_days: int = 30  # the delivery rows kept as samples of rejected requests
    event_bodies_days: int = 90  # raw bodies of applied or ignored events

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(
            deliveries_days=settings.retention_deliveries_days,
            rejection_samples_days=settings.retention_rejection_samples_days,
            event_bodies_days=settings.retention_event_bodies_days,
        )

    def describe(self) -> dict[str, int]:
        return {
            "deliveries_days": self.deliveries_days,
            "rejection_samples_days": self.rejection_samples_days,
            "event_bodies_days": self.event_bodies_days,
        }


@dataclass(frozen=True)
class RetentionReport:
    applied: bool
    at: datetime
    policy: Policy
    counts: dict[str, int]  # what was (or, in a dry run, would be) removed, by kind

    def lines(self) -> list[str]:
        verb = "removed" if self.applied else "would remove (dry run; --apply to do it)"
        out = [f"retention at {self.at:%Y-%m-%d %H:%M} UTC, policy {self.policy.describe()}"]
        out += [f"  {kind}: {verb} {n}" for kind, n in self.counts.items()]
        return out


def _where(policy: Policy, now: datetime) -> dict[str, tuple[Any, ColumnElement[bool]]]:
    deliveries = now - timedelta(days=policy.deliveries_days)
    samples = now - timedelta(days=policy.rejection_samples_days)
    bodies = now - timedelta(days=policy.event_bodies_days)
    return {
        "delivery_rows": (
            WebhookDelivery,
            and_(WebhookDelivery.received_at < deliveries, WebhookDelivery.outcome != "rejected"),
        ),
        "rejection_samples": (
            WebhookDelivery,
            and_(WebhookDelivery.received_at < samples, WebhookDelivery.outcome == "rejected"),
        ),
        "rejection_counters": (WebhookRejection, WebhookRejection.minute < deliveries),
        "event_bodies": (
            StripeEvent,
            and_(
                StripeEvent.first_received_at < bodies,
                StripeEvent.status.in_(SETTLED),
                StripeEvent.payload_pruned_at.is_(None),
            ),
        ),
    }


def run(
    engine: Engine,
    policy: Policy,
    actor: Actor,
    *,
    apply: bool = False,
    now: datetime | None = None,
) -> RetentionReport:
    """Count (dry run) or remove what the policy says is too old, in one transaction."""
    require(actor, "audit.view")  # admins only: it deletes history
    now = now or utcnow()
    counts: dict[str, int] = {}
    with session_scope(engine, write=apply) as session:
        for kind, (model, where) in _where(policy, now).items():
            counts[kind] = int(
                session.execute(select(func.count()).select_from(model).where(where)).scalar_one()
            )
            if apply and counts[kind]:
                _remove(session, kind, model, where, now)
        if apply:
            audit.record(
                session, actor, ACTION, "retention", {"policy": policy.describe(), **counts}
            )
    return RetentionReport(apply, now, policy, counts)


def _remove(
    session: Session, kind: str, model: Any, where: ColumnElement[bool], now: datetime
) -> None:
    if kind == "event_bodies":
        session.execute(
            update(StripeEvent).where(where).values(payload=PRUNED_BODY, payload_pruned_at=now)
        )
    else:
        session.execute(delete(model).where(where))


@dataclass(frozen=True)
class LastRun:
    at: datetime
    actor: str
    details: dict[str, Any]


def last_run(session: Session, actor: Actor) -> LastRun | None:
    """The latest applied run (from the audit log), for the admins' view of the policy."""
    require(actor, "audit.view")
    entry = session.execute(
        select(AuditEntry)
        .where(AuditEntry.action == ACTION)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if entry is None:
        return None
    return LastRun(entry.at, entry.actor, dict(entry.details))
