"""Replay one stored Stripe event through the same handlers: a dry run lists what would change
(rolled back), `apply` applies it once. Admins only; audited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, require
from core.console.reconcile import mark_reconciled
from core.db import session_scope
from core.models import (
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
)
from core.webhook.handlers import HANDLERS, Context
from core.webhook.receive import safe_error
from core.webhook.validate import problem


@dataclass(frozen=True)
class Change:
    table: str
    key: str
    kind: str  # added | changed
    fields: dict[str, tuple[Any, Any]]  # column -> (before, after)


@dataclass(frozen=True)
class ReplayResult:
    event_id: str
    dry_run: bool
    status_before: str
    status_after: str
    changes: tuple[Change, ...]
    error: str | None = None

    @property
    def changes_nothing(self) -> bool:
        return not self.changes and self.status_before == self.status_after

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        if self.error:
            return f"The handler failed: {self.error}. Nothing was changed."
        if self.changes_nothing:
            return f"Replaying {self.event_id} {verb} nothing: it was already applied."
        return (
            f"Replaying {self.event_id} {verb} {len(self.changes)} row(s); "
            f"status {self.status_before} -> {self.status_after}."
        )


def _object_keys(event: dict[str, Any]) -> set[str]:
    """The Stripe ids an event's handler may touch rows by."""
    obj = event.get("data", {}).get("object", {})
    keys: set[str] = set()
    for name in ("id", "payment_intent", "charge", "latest_charge"):
        value = obj.get(name)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str):
            keys.add(value)
    return keys


def _rows(session: Session, keys: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    session.flush()
    snap: dict[tuple[str, str], dict[str, Any]] = {}
    orders = session.execute(
        select(Order.__table__).where(
            Order.checkout_session_id.in_(keys) | Order.payment_intent_id.in_(keys)
        )
    ).mappings()
    order_ids = []
    for row in orders:
        order_ids.append(row["id"])
        snap[("orders", str(row["id"]))] = dict(row)
    attempts = session.execute(
        select(PaymentAttempt.__table__).where(
            PaymentAttempt.id.in_(keys) | PaymentAttempt.payment_intent_id.in_(keys)
        )
    ).mappings()
    for row in attempts:
        snap[("payment_attempts", str(row["id"]))] = dict(row)
    if order_ids:
        for name, table in (
            ("fulfillments", Fulfillment.__table__),
            ("order_transitions", OrderTransition.__table__),
        ):
            for row in session.execute(
                select(table).where(table.c.order_id.in_(order_ids))
            ).mappings():
                snap[(name, str(row["id"]))] = dict(row)
    return snap


def _diff(
    before: dict[tuple[str, str], dict[str, Any]], after: dict[tuple[str, str], dict[str, Any]]
) -> tuple[Change, ...]:
    changes = []
    for key, row in sorted(after.items()):
        old = before.get(key)
        if old is None:
            changes.append(Change(key[0], key[1], "added", {k: (None, v) for k, v in row.items()}))
            continue
        fields = {k: (old.get(k), v) for k, v in row.items() if old.get(k) != v}
        if fields:
            changes.append(Change(key[0], key[1], "changed", fields))
    return tuple(changes)


def replay(
    engine: Engine,
    ctx: Context,
    actor: Actor,
    event_id: str,
    *,
    dry_run: bool = True,
) -> ReplayResult:
    """Run a stored event's handler again. A dry run rolls back and reports what would change;
    an applied event changes nothing (its facts are already recorded)."""
    require(actor, "events.replay")
    with session_scope(engine, write=False) as session:
        exists = session.get(StripeEvent, event_id) is not None
    if not exists:
        raise LookupError(f"No stored event {event_id}.")
    session = Session(bind=engine, expire_on_commit=False)
    try:
        row = session.execute(
            select(StripeEvent).where(StripeEvent.id == event_id).with_for_update()
        ).scalar_one()
        event = dict(row.payload)
        status_before = row.status
        keys = _object_keys(event)
        before = _rows(session, keys)
        error = None
        handler = HANDLERS.get(row.type)
        status_after = status_before
        unprocessable = problem(event)  # still impossible: the handler is not run
        try:
            if unprocessable is not None:
                raise ValueError(f"unprocessable: {unprocessable}")
            with session.begin_nested():
                if handler is not None and status_before != "ignored":
                    handler(session, event, ctx)
                    status_after = "processed"
        except Exception as exc:
            error = safe_error(exc)
        after = _rows(session, keys)
        changes = _diff(before, after) if error is None else ()
        result = ReplayResult(event_id, dry_run, status_before, status_after, changes, error)
        if dry_run or error is not None:
            session.rollback()
        elif status_after != status_before:  # a failed event, applied now
            row.status = status_after
            row.processed_at = ctx.now()
            row.last_error = None
            row.source = "replay"
            mark_reconciled(session, event_id)
        audit.record(
            session,
            actor,
            "events.replay_dry_run" if dry_run else "events.replay",
            f"event:{event_id}",
            {
                "changes": len(result.changes),
                "status_before": status_before,
                "status_after": status_after,
                "error": error,
            },
        )
        session.commit()
        return result
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def recent_failures(session: Session, limit: int = 50) -> list[StripeEvent]:
    """Stored events not applied (handler failed, or unprocessable), oldest first: what an
    admin may want to replay."""
    return list(
        session.execute(
            select(StripeEvent)
            .where(StripeEvent.status.in_(("failed", "unprocessable")))
            .order_by(StripeEvent.created)
            .limit(limit)
        ).scalars()
    )
