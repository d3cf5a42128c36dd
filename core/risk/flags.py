"""Stored risk flags: reading them for the detectors, locking entities, writing the difference
between stored and recomputed windows (`core.risk.detector.reconcile`)."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnClause,
    bindparam,
    column,
    delete,
    insert,
    text,
    update,
)
from sqlalchemy.orm import Session

from core.db import Prepared, raw
from core.models import PaymentAttempt, RiskFlag, UTCDateTime
from core.risk import detector
from core.risk.detector import (
    ENTITY_COLUMNS,
    EntityKind,
    Rules,
    Stored,
    Window,
)
from core.settings import Settings

log = logging.getLogger(__name__)

_LOCK_NAMESPACE = b"risk_flags"
_GLOBAL_LOCK_KEY = 0x7269736B  # "risk": batch runs take it exclusively, entity writers shared


def rules_from(settings: Settings) -> Rules:
    return Rules(
        threshold=settings.burst_threshold,
        window=timedelta(minutes=settings.burst_window_minutes),
    )


def _column(kind: EntityKind) -> Any:
    return getattr(PaymentAttempt, ENTITY_COLUMNS[kind])


def _entity_lock_key(kind: str, value: str) -> int:
    digest = hashlib.blake2b(f"{kind}\x00{value}".encode(), digest_size=8, person=_LOCK_NAMESPACE)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_FLAG_COLUMNS: tuple[ColumnClause[Any], ...] = (
    column("id"),
    column("entity_kind"),
    column("entity_value"),
    column("pattern"),
    column("window_start", UTCDateTime()),
    column("window_end", UTCDateTime()),
    column("failures"),
    column("distinct_cards"),
    column("status"),
)


@dataclass(frozen=True)
class _FlagRow:
    id: int
    entity_kind: str
    entity_value: str
    pattern: str
    window_start: datetime
    window_end: datetime
    failures: int
    distinct_cards: int
    status: str


@functools.lru_cache(maxsize=32)
def _flags_sql(entities: int, postgres: bool) -> Prepared:
    """Stored flags of `entities` (kind, value) pairs overlapping [:lo, :hi], locked."""
    pairs = " OR ".join(f"(entity_kind = :k{i} AND entity_value = :v{i})" for i in range(entities))
    sql = (
        f"SELECT {', '.join(c.name for c in _FLAG_COLUMNS)} FROM risk_flags WHERE ({pairs}) "
        "AND window_end >= :lo AND window_start <= :hi"
    )
    return Prepared(
        text(sql + (" FOR UPDATE" if postgres else ""))
        .bindparams(bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime()))
        .columns(*_FLAG_COLUMNS)
    )


def _find_flags(
    session: Session, entities: Sequence[tuple[str, str]], lo: datetime, hi: datetime
) -> list[_FlagRow]:
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    for i, (kind, value) in enumerate(entities):
        params[f"k{i}"] = kind
        params[f"v{i}"] = value
    cursor = raw(session)
    statement = _flags_sql(len(entities), cursor.dialect.name == "postgresql")
    return [_FlagRow(*row) for row in cursor.rows(statement, params)]


def _stored(row: _FlagRow | RiskFlag) -> Stored:
    return Stored(
        row.id, row.window_start, row.window_end, row.failures, row.status, row.distinct_cards
    )


@dataclass
class Changes:
    """What one detection pass wrote."""

    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    def add(self, other: Changes) -> None:
        self.created += other.created
        self.updated += other.updated
        self.removed += other.removed


def _apply(
    session: Session,
    kind: str,
    value: str,
    pattern: str,
    stored: Sequence[Stored],
    windows: Sequence[Window],
    now: datetime,
) -> Changes:
    plan = detector.reconcile(stored, windows)
    changes = Changes()
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
        for flag_id in ids:
            log.warning("risk flag %s raised: %s %s", flag_id, pattern, kind)
    return changes


@functools.lru_cache(maxsize=8)
def _lock_sql(keys: int) -> Prepared:
    calls = ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(keys))
    return Prepared(text(f"SELECT pg_advisory_xact_lock_shared(:g), {calls}"))


def _lock_entities(session: Session, entities: Sequence[tuple[EntityKind, str]]) -> None:
    cursor = raw(session)
    if cursor.dialect.name == "postgresql":
        lock_keys = sorted({_entity_lock_key(k, v) for k, v in entities})
        cursor.execute(
            _lock_sql(len(lock_keys)),
            {"g": _GLOBAL_LOCK_KEY, **{f"k{i}": k for i, k in enumerate(lock_keys)}},
        )
