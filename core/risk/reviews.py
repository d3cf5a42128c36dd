"""Reading flags for review and the Overview; confirming or dismissing them."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, allowed, mask_email, require
from core.models import PaymentAttempt, RiskFlag, RiskIncident, utcnow
from core.risk.detector import (
    EntityKind,
)
from core.risk.flags import _column

Decision = Literal["confirm", "dismiss"]
MAX_NOTE_CHARS = 2000


class ReviewError(Exception):
    """A review that cannot be applied; the message is safe to show."""


def open_flag_count(session: Session) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(RiskFlag).where(RiskFlag.status == "open")
        ).scalar_one()
    )


def list_flags(session: Session, status: str | None = "open", limit: int = 200) -> list[RiskFlag]:
    stmt = select(RiskFlag).order_by(RiskFlag.window_end.desc(), RiskFlag.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(RiskFlag.status == status)
    return list(session.execute(stmt).scalars())


def flag_attempts(session: Session, flag: RiskFlag) -> list[PaymentAttempt]:
    """The failed attempts behind `flag`: the entity's failures inside its window."""
    kind: EntityKind = flag.entity_kind  # type: ignore[assignment]
    return list(
        session.execute(
            select(PaymentAttempt)
            .where(
                _column(kind) == flag.entity_value,
                PaymentAttempt.outcome == "failed",
                PaymentAttempt.created >= flag.window_start,
                PaymentAttempt.created <= flag.window_end,
            )
            .order_by(PaymentAttempt.created, PaymentAttempt.id)
        ).scalars()
    )


def entity_timeline(
    session: Session, flag: RiskFlag, margin: timedelta | None = None
) -> list[PaymentAttempt]:
    """Every attempt (failed or not) of the flag's entity around its window, for the chart."""
    margin = margin if margin is not None else timedelta(hours=6)
    kind: EntityKind = flag.entity_kind  # type: ignore[assignment]
    return list(
        session.execute(
            select(PaymentAttempt)
            .where(
                _column(kind) == flag.entity_value,
                PaymentAttempt.created >= flag.window_start - margin,
                PaymentAttempt.created <= flag.window_end + margin,
            )
            .order_by(PaymentAttempt.created, PaymentAttempt.id)
            .limit(5000)
        ).scalars()
    )


def display_value(kind: str, value: str, actor: Actor) -> str:
    """The entity as `actor` may see it: emails masked unless the role sees full emails."""
    if kind == "email" and not allowed(actor.role, "emails.view_full"):
        return mask_email(value) or value
    return value


def review(session: Session, actor: Actor, flag_id: int, decision: Decision, note: str) -> RiskFlag:
    """Confirm or dismiss an open flag with a note; audited in the same transaction."""
    require(actor, "risk.review")
    if decision not in ("confirm", "dismiss"):
        raise ReviewError("Choose confirm or dismiss.")
    note = (note or "").strip()
    if not note:
        raise ReviewError("A note is required: say what you checked.")
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"The note is too long (at most {MAX_NOTE_CHARS} characters).")
    flag = session.execute(
        select(RiskFlag).where(RiskFlag.id == flag_id).with_for_update()
    ).scalar_one_or_none()
    if flag is None:
        raise ReviewError("This flag no longer exists (it was merged into another one).")
    if flag.status != "open":
        raise ReviewError(f"This flag was already {flag.status} by {flag.reviewed_by}.")
    at = utcnow()
    flag.status = "confirmed" if decision == "confirm" else "dismissed"
    flag.reviewed_by = actor.username
    flag.reviewed_at = at
    flag.note = note
    audit.record(
        session,
        actor,
        f"risk.flag_{flag.status}",
        target=f"risk_flag:{flag.id}",
        details={
            "entity_kind": flag.entity_kind,
            "entity": display_value(flag.entity_kind, flag.entity_value, Actor("audit", None)),
            "pattern": flag.pattern,
            "window_start": flag.window_start.isoformat(),
            "window_end": flag.window_end.isoformat(),
            "failures": flag.failures,
            "note": note,
        },
        at=at,
    )
    session.flush()
    return flag


# --- Incidents (issue 14) --------------------------------------------------------------------


def list_incidents(
    session: Session, status: str | None = "open", limit: int = 200
) -> list[RiskIncident]:
    stmt = (
        select(RiskIncident)
        .order_by(RiskIncident.last_seen.desc(), RiskIncident.id.desc())
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(RiskIncident.status == status)
    return list(session.execute(stmt).scalars())


def open_incident_count(session: Session) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(RiskIncident).where(RiskIncident.status == "open")
        ).scalar_one()
    )


def incident_flags(session: Session, incident_id: int) -> list[RiskFlag]:
    return list(
        session.execute(
            select(RiskFlag)
            .where(RiskFlag.incident_id == incident_id)
            .order_by(RiskFlag.entity_kind, RiskFlag.pattern, RiskFlag.id)
        ).scalars()
    )


def incident_attempts(session: Session, flags: list[RiskFlag]) -> list[PaymentAttempt]:
    """The failed attempts behind any of `flags`, each once, in time order."""
    seen: dict[str, PaymentAttempt] = {}
    for flag in flags:
        for attempt in flag_attempts(session, flag):
            seen.setdefault(attempt.id, attempt)
    return sorted(seen.values(), key=lambda a: (a.created, a.id))


def review_incident(
    session: Session,
    actor: Actor,
    incident_id: int,
    decision: Decision,
    note: str,
    seen_flags: frozenset[int] | None = None,
) -> tuple[RiskIncident, bool]:
    """Confirm or dismiss incident `incident_id` and every open flag of it, with a note; audited
    in the same transaction. `seen_flags`: the flags the reviewer was shown; if the incident has
    changed since (a flag joined or left), nothing is written. Submitting the same decision
    again (a double click) changes nothing and is not an error: (incident, False)."""
    require(actor, "risk.review")
    if decision not in ("confirm", "dismiss"):
        raise ReviewError("Choose confirm or dismiss.")
    status = "confirmed" if decision == "confirm" else "dismissed"
    incident = session.execute(
        select(RiskIncident).where(RiskIncident.id == incident_id).with_for_update()
    ).scalar_one_or_none()
    if incident is None:
        raise ReviewError(f"Incident #{incident_id} no longer exists (merged into another one).")
    if incident.status != "open":
        if incident.status == status and incident.reviewed_by == actor.username:
            return incident, False
        raise ReviewError(
            f"Incident #{incident_id} was already {incident.status} by {incident.reviewed_by}."
        )
    note = (note or "").strip()
    if not note:
        raise ReviewError("A note is required: say what you checked.")
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"The note is too long (at most {MAX_NOTE_CHARS} characters).")
    flags = incident_flags(session, incident_id)
    if seen_flags is not None and frozenset(f.id for f in flags) != seen_flags:
        raise ReviewError(
            f"Incident #{incident_id} changed since it was shown (its flags are now "
            f"{len(flags)}): nothing was saved; look at it again."
        )
    at = utcnow()
    reviewed = [f for f in flags if f.status == "open"]
    for flag in reviewed:
        flag.status = status
        flag.reviewed_by = actor.username
        flag.reviewed_at = at
        flag.note = note
    incident.status = status
    incident.reviewed_by = actor.username
    incident.reviewed_at = at
    incident.note = note
    audit.record(
        session,
        actor,
        f"risk.incident_{status}",
        target=f"risk_incident:{incident_id}",
        details={
            "flags": [f.id for f in reviewed],
            "entities": sorted(
                {
                    f"{f.entity_kind}:"
                    + display_value(f.entity_kind, f.entity_value, Actor("audit", None))
                    for f in flags
                }
            ),
            "first_seen": incident.first_seen.isoformat(),
            "last_seen": incident.last_seen.isoformat(),
            "note": note,
        },
        at=at,
    )
    session.flush()
    return incident, True
