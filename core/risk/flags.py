"""Stored risk flags: writing the difference between stored and recomputed windows
(`core.risk.detector.reconcile`). Reads and locks are in core.risk.store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from core.models import PaymentAttempt, RiskFlag
from core.risk import detector
from core.risk.detector import (
    ENTITY_COLUMNS,
    NO_FILTER,
    EntityKind,
    Rules,
    Stored,
    Window,
)
from core.risk.store import FlagRow
from core.settings import Settings

log = logging.getLogger(__name__)


# A promotion code is shared by every buyer using it: see core.risk.rules for why 12.
PROMOTION_CODE_THRESHOLD = 12


def rules_from(settings: Settings) -> Rules:
    """The default rule set, seeded from BURST_THRESHOLD / BURST_WINDOW_MINUTES (the live set
    is core.risk.rules.live once an admin saved one)."""
    window = timedelta(minutes=settings.burst_window_minutes)
    return Rules(
        threshold=settings.burst_threshold,
        window=window,
        overrides=(("promotion_code", "burst", PROMOTION_CODE_THRESHOLD, window, NO_FILTER),),
    )


def _column(kind: EntityKind) -> Any:
    return getattr(PaymentAttempt, ENTITY_COLUMNS[kind])


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _stored(row: FlagRow | RiskFlag) -> Stored:
    return Stored(
        row.id, row.window_start, row.window_end, row.failures, row.status, row.distinct_cards
    )


@dataclass
class Changes:
    """What one detection pass wrote."""

    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    # every flag the pass recomputed, changed or not, with its window (for incident grouping)
    windows: dict[int, Window] = field(default_factory=dict)

    def add(self, other: Changes) -> None:
        self.created += other.created
        self.updated += other.updated
        self.removed += other.removed
        self.windows.update(other.windows)


def _apply(
    session: Session,
    kind: str,
    value: str,
    pattern: str,
    stored: Sequence[Stored],
    windows: Sequence[Window],
    now: datetime,
    *,
    keep_reviewed: bool = False,
) -> Changes:
    plan = detector.reconcile(stored, windows, keep_reviewed=keep_reviewed)
    changes = Changes()
    changes.windows.update(plan.keep)
    if plan.empty:
        return changes
    if plan.delete:
        session.execute(delete(RiskFlag).where(RiskFlag.id.in_(plan.delete)))
        changes.removed += plan.delete
    for flag_id, w, status in plan.update:
        session.execute(
            update(RiskFlag)
            .where(RiskFlag.id == flag_id)
            .values(
                window_start=w.start,
                window_end=w.end,
                failures=w.failures,
                distinct_cards=w.distinct_cards,
                status=status,
            )
        )
        changes.updated.append(flag_id)
        changes.windows[flag_id] = w
    if plan.insert:
        rows = [
            {
                "entity_kind": kind,
                "entity_value": value,
                "pattern": pattern,
                "window_start": w.start,
                "window_end": w.end,
                "failures": w.failures,
                "distinct_cards": w.distinct_cards,
                "status": "open",
                "created_at": now,
            }
            for w in plan.insert
        ]
        ids = session.execute(insert(RiskFlag).returning(RiskFlag.id), rows).scalars().all()
        changes.created += list(ids)
        changes.windows.update(zip(ids, plan.insert, strict=True))
        for flag_id in ids:
            log.warning("risk flag %s raised: %s %s", flag_id, pattern, kind)
    return changes
