"""Changing the rule set: a backtest that shows, without writing anything, what a proposed
rule set would have raised over a past period next to the live one; and saving it (a new
version, audited) which re-derives the stored flags and incidents under it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, require
from core.models import RiskRuleSet, utcnow
from core.risk import batch, detector
from core.risk.detector import Rules
from core.risk.rules import RulesError, live, to_body
from core.settings import Settings


@dataclass
class Saved:
    version: int
    changed: bool  # False: the same rule set was already live (a repeated submission)
    result: batch.BatchResult | None = None


def save(
    session: Session,
    actor: Actor,
    settings: Settings,
    proposed: Rules,
    note: str,
    base_version: int,
    *,
    now: datetime | None = None,
) -> Saved:
    """Make `proposed` the live rule set (a new version), audited, and re-derive every flag and
    incident under it (reviewed flags the new rules no longer raise stay, as records).
    `base_version`: the version the admin edited; if another was saved since, nothing is."""
    require(actor, "risk.rules")
    note = (note or "").strip()
    if not note:
        raise RulesError("A note is required: say why the rules change.")
    version, current = live(session, settings)
    if to_body(current) == to_body(proposed):
        return Saved(version, False)
    if version != base_version:
        raise RulesError(
            f"The rules changed since you opened them (now version {version}): reload them."
        )
    now = now or utcnow()
    body = to_body(proposed)
    session.add(
        RiskRuleSet(
            version=version + 1, created_at=now, created_by=actor.username, note=note, body=body
        )
    )
    old = {(r["kind"], r["pattern"]): r for r in to_body(current)["rules"]}
    audit.record(
        session,
        actor,
        "risk.rules_saved",
        target=f"risk_rules:{version + 1}",
        details={
            "from_version": version,
            "changed": [r for r in body["rules"] if old.get((r["kind"], r["pattern"])) != r],
            "allow_added": sorted([k, v] for k, v in proposed.allow - current.allow),
            "allow_removed": sorted([k, v] for k, v in current.allow - proposed.allow),
            "note": note,
        },
        at=now,
    )
    session.flush()
    result = batch.detect_period(session, proposed, now=now, keep_reviewed=True)
    return Saved(version + 1, True, result)


# --- Backtest ------------------------------------------------------------------------------------


FlagKey = tuple[str, str, str, datetime, datetime]


@dataclass
class Outcome:
    """What one rule set raises over the period."""

    flags: dict[FlagKey, int] = field(default_factory=dict)  # key -> failures
    incidents: list[list[FlagKey]] = field(default_factory=list)


@dataclass
class Backtest:
    since: datetime
    until: datetime
    attempts: int
    current: Outcome
    proposed: Outcome

    @property
    def only_proposed(self) -> list[FlagKey]:
        return sorted(set(self.proposed.flags) - set(self.current.flags))

    @property
    def only_current(self) -> list[FlagKey]:
        return sorted(set(self.current.flags) - set(self.proposed.flags))


def _outcome(failed: Any, rules: Rules, since: datetime, until: datetime) -> Outcome:
    found = batch._windows_by_entity(failed, rules, since, until)
    members: dict[FlagKey, tuple[str, ...]] = {}
    outcome = Outcome()
    for (kind, value, pattern), windows in found.items():
        for w in windows:
            key = (kind, value, pattern, w.start, w.end)
            members[key] = w.attempt_ids
            outcome.flags[key] = w.failures
    outcome.incidents = detector.components(members)
    return outcome


def backtest(
    session: Session, current: Rules, proposed: Rules, since: datetime, until: datetime
) -> Backtest:
    """The flags and incidents each rule set raises for hits ending in [since, until], from the
    stored attempts; reads only (nothing is written, whatever the rules)."""
    reach = max(current.reach, proposed.reach)
    failed = batch._read_failed(
        session, since - reach, until, details=current.filtered or proposed.filtered
    )
    return Backtest(
        since,
        until,
        len(failed),
        _outcome(failed, current, since, until),
        _outcome(failed, proposed, since, until),
    )
