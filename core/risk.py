"""Risk flags: feeding core.bursts from payment_attempts and keeping risk_flags equal to it.

Two entry points give the same flags for the same attempts (see core.bursts for why):

- `on_attempt` runs inside the webhook transaction after each recorded attempt. It re-derives
  only the neighbourhood the attempt can change: two indexed queries for that attempt's
  entities (stored flags near it, the entity's failed attempts in the range), no network.
- `detect_period` (`python -m core bursts`) recomputes every entity over a period.

Both replace the stored flags of the recomputed range with the recomputed windows
(`core.bursts.reconcile`): a flag keeps its id and review when it grows; a dismissed flag that
gains failures is opened again for review. On PostgreSQL a transaction-scoped advisory lock
per entity (shared by batch runs, which take it exclusively) serialises concurrent writers of
one entity's flags, so two concurrent deliveries cannot each miss the other's attempt.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    delete,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from core import audit, bursts
from core.access import Actor, mask_email, require
from core.bursts import ENTITY_COLUMNS, EntityKind, Pattern, Point, Rules, Stored, Window
from core.models import PaymentAttempt, RiskFlag, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

_LOCK_NAMESPACE = b"risk_flags"
_GLOBAL_LOCK_KEY = 0x7269736B  # "risk": batch runs take it exclusively, entity writers shared
Decision = Literal["confirm", "dismiss"]
MAX_NOTE_CHARS = 2000


class ReviewError(Exception):
    """A review that cannot be applied; the message is safe to show."""


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


# --- Reading ----------------------------------------------------------------------------------


def _points_query(
    tag: int, kind: EntityKind, value: str, lo: datetime, hi: datetime
) -> Select[int, str, datetime, str | None]:
    col = _column(kind)
    return select(
        literal(tag).label("tag"),
        PaymentAttempt.id,
        PaymentAttempt.created,
        PaymentAttempt.card_fingerprint,
    ).where(
        col == value,
        PaymentAttempt.outcome == "failed",
        PaymentAttempt.created >= lo,
        PaymentAttempt.created <= hi,
    )


def _stored(row: RiskFlag) -> Stored:
    return Stored(
        row.id, row.window_start, row.window_end, row.failures, row.status, row.distinct_cards
    )


def _overlapping(
    keys: Iterable[tuple[str, str]], lo: datetime | None, hi: datetime | None
) -> ColumnElement[bool]:
    conditions = [
        and_(RiskFlag.entity_kind == kind, RiskFlag.entity_value == value) for kind, value in keys
    ]
    bounds = []
    if lo is not None:
        bounds.append(RiskFlag.window_end >= lo)
    if hi is not None:
        bounds.append(RiskFlag.window_start <= hi)
    return and_(or_(*conditions), *bounds)


# --- Writing ----------------------------------------------------------------------------------


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
    plan = bursts.reconcile(stored, windows)
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


# --- Incremental: one attempt ------------------------------------------------------------------


def attempt_hook(rules: Rules) -> Callable[[Session, PaymentAttempt], None]:
    """The `Context.on_attempt` hook for these rules."""

    def hook(session: Session, attempt: PaymentAttempt) -> None:
        on_attempt(session, attempt, rules)

    return hook


def _moved_from(attempt: PaymentAttempt) -> datetime | None:
    """The attempt's previous `created` when this transaction moved it (an earlier-stamped event
    of the same attempt arrived later): hits around the old time must be recomputed too."""
    history = inspect(attempt).attrs.created.history
    old = [t for t in history.deleted if isinstance(t, datetime)]
    return old[0] if old else None


def on_attempt(
    session: Session, attempt: PaymentAttempt, rules: Rules, now: datetime | None = None
) -> Changes:
    """Bring the flags of `attempt`'s entities up to date, inside the caller's transaction."""
    if attempt.outcome != "failed":
        return Changes()  # outcomes never change, so a success adds nothing to any window
    moved = _moved_from(attempt)  # read before any query flushes the change
    entities = [
        (kind, value)
        for kind, column in ENTITY_COLUMNS.items()
        if (value := getattr(attempt, column))
    ]
    if not entities:
        return Changes()
    times = [attempt.created] + ([moved] if moved is not None else [])
    lo, hi = bursts.affected_range(times, rules)
    return refresh(session, entities, lo, hi, rules, now=now)


def refresh(
    session: Session,
    entities: Sequence[tuple[EntityKind, str]],
    lo: datetime,
    hi: datetime,
    rules: Rules,
    *,
    now: datetime | None = None,
) -> Changes:
    """Recompute the flags of `entities` for hits with right ends in [lo, hi] (extended over
    any stored flag the range touches) and write the difference."""
    now = now or utcnow()
    window = rules.window
    if _is_postgres(session):
        lock_keys = sorted({_entity_lock_key(k, v) for k, v in entities})
        calls = ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(len(lock_keys)))
        session.execute(
            text(f"SELECT pg_advisory_xact_lock_shared(:g), {calls}"),
            {"g": _GLOBAL_LOCK_KEY, **{f"k{i}": k for i, k in enumerate(lock_keys)}},
        )
    rows = session.execute(
        select(RiskFlag).where(_overlapping(entities, lo - window, hi)).with_for_update()
    ).scalars()
    found: dict[tuple[str, str, str], list[RiskFlag]] = {}
    for row in rows:
        found.setdefault((row.entity_kind, row.entity_value, row.pattern), []).append(row)
    # Extend each range until every stored flag overlapping [x_lo - window, x_hi] lies inside
    # [x_lo, x_hi]: then replacing those flags by the recomputed hits is exact.
    ranges: dict[tuple[EntityKind, str, Pattern], tuple[datetime, datetime]] = {}
    stored: dict[tuple[EntityKind, str, Pattern], list[RiskFlag]] = {}
    for kind, value in entities:
        for pattern in rules.patterns(kind):
            x_lo, x_hi = lo, hi
            flags = found.get((kind, value, pattern), [])
            while True:
                new_lo = min([x_lo, *(f.window_start for f in flags)])
                new_hi = max([x_hi, *(f.window_end for f in flags)])
                if (new_lo, new_hi) == (x_lo, x_hi):
                    break
                x_lo, x_hi = new_lo, new_hi
                flags = list(
                    session.execute(
                        select(RiskFlag)
                        .where(
                            _overlapping([(kind, value)], x_lo - window, x_hi),
                            RiskFlag.pattern == pattern,
                        )
                        .with_for_update()
                    ).scalars()
                )
            stored[(kind, value, pattern)] = flags
            ranges[(kind, value, pattern)] = (x_lo, x_hi)
    spans: dict[tuple[EntityKind, str], tuple[datetime, datetime]] = {}
    for (kind, value, _pattern), (x_lo, x_hi) in ranges.items():
        a, b = spans.get((kind, value), (x_lo, x_hi))
        spans[(kind, value)] = (min(a, x_lo), max(b, x_hi))
    tagged = list(spans.items())
    queries = [
        _points_query(tag, kind, value, a - window, b)
        for tag, ((kind, value), (a, b)) in enumerate(tagged)
    ]
    points: list[list[Point]] = [[] for _ in tagged]
    statement = queries[0] if len(queries) == 1 else union_all(*queries)
    for tag, attempt_id, created, card in session.execute(statement):
        points[tag].append(Point(created, attempt_id, card))
    by_entity = {key: pts for (key, _span), pts in zip(tagged, points, strict=True)}
    changes = Changes()
    for (kind, value, pattern), (x_lo, x_hi) in ranges.items():
        windows = bursts.detect_windows(by_entity[(kind, value)], pattern, rules, ends=(x_lo, x_hi))
        changes.add(
            _apply(
                session,
                kind,
                value,
                pattern,
                [_stored(f) for f in stored[(kind, value, pattern)]],
                windows,
                now,
            )
        )
    return changes


# --- Batch: a period ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    attempts: int
    entities: int
    flags: int
    changes: Changes


_ATTEMPT_COLUMNS = ("id", "created", *ENTITY_COLUMNS.values())


def _read_failed(session: Session, lo: datetime | None, hi: datetime | None) -> pd.DataFrame:
    conditions: list[ColumnElement[bool]] = [PaymentAttempt.outcome == "failed"]
    if lo is not None:
        conditions.append(PaymentAttempt.created >= lo)
    if hi is not None:
        conditions.append(PaymentAttempt.created <= hi)
    # `created` as stored (text on SQLite): one vectorised parse instead of a datetime per row.
    columns = [
        type_coerce(PaymentAttempt.created, String).label("created")
        if c == "created"
        else getattr(PaymentAttempt, c)
        for c in _ATTEMPT_COLUMNS
    ]
    rows = session.execute(select(*columns).where(*conditions)).all()
    frame = pd.DataFrame.from_records(rows, columns=list(_ATTEMPT_COLUMNS))
    frame["created"] = pd.to_datetime(frame["created"], format="ISO8601", utc=True)
    return frame


def detect_period(
    session: Session,
    rules: Rules,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime | None = None,
) -> BatchResult:
    """Recompute every entity's flags for hits with right ends in [since, until] (None:
    unbounded) and write the difference; equal to what incremental detection stored."""
    now = now or utcnow()
    window = rules.window
    if _is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:g)"), {"g": _GLOBAL_LOCK_KEY})
    x_lo, x_hi = since, until
    while True:  # extend the range over every stored flag it touches
        bounds: list[ColumnElement[bool]] = []
        if x_lo is not None:
            bounds.append(RiskFlag.window_end >= x_lo - window)
        if x_hi is not None:
            bounds.append(RiskFlag.window_start <= x_hi)
        flags = list(session.execute(select(RiskFlag).where(*bounds).with_for_update()).scalars())
        new_lo = None if x_lo is None else min([x_lo, *(f.window_start for f in flags)])
        new_hi = None if x_hi is None else max([x_hi, *(f.window_end for f in flags)])
        if (new_lo, new_hi) == (x_lo, x_hi):
            break
        x_lo, x_hi = new_lo, new_hi
    frame = _read_failed(session, None if x_lo is None else x_lo - window, x_hi)
    stored: dict[tuple[str, str, str], list[Stored]] = {}
    for f in flags:
        stored.setdefault((f.entity_kind, f.entity_value, f.pattern), []).append(_stored(f))
    computed = _windows_by_entity(frame, rules, x_lo, x_hi)
    changes = Changes()
    entities = 0
    flag_count = 0
    for key in sorted(set(stored) | set(computed)):
        kind, value, pattern = key
        windows = computed.get(key, [])
        flag_count += len(windows)
        entities += 1
        changes.add(_apply(session, kind, value, pattern, stored.get(key, []), windows, now))
    return BatchResult(len(frame), entities, flag_count, changes)


def _windows_by_entity(
    frame: pd.DataFrame, rules: Rules, lo: datetime | None, hi: datetime | None
) -> dict[tuple[str, str, str], list[Window]]:
    result: dict[tuple[str, str, str], list[Window]] = {}
    if frame.empty:
        return result
    frame = frame.drop_duplicates("id")
    times = frame["created"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    window_us = int(rules.window / timedelta(microseconds=1))
    created = frame["created"].dt.to_pydatetime()
    ids = frame["id"].to_numpy()
    cards = frame["card_fingerprint"].to_numpy()
    for kind, column in ENTITY_COLUMNS.items():
        codes, uniques = pd.factorize(frame[column], use_na_sentinel=True)
        present = codes >= 0
        minimum = min(rules.minimum(p) for p in rules.patterns(kind))
        dense = bursts.dense_entities(
            codes[present].astype(np.int64), times[present], minimum, window_us
        )
        if len(dense) == 0:
            continue
        rows = np.flatnonzero(np.isin(codes, dense))
        by_code: dict[int, list[Point]] = {}
        for i in rows:
            card = cards[i]
            by_code.setdefault(int(codes[i]), []).append(
                Point(created[i], str(ids[i]), None if pd.isna(card) else str(card))
            )
        for code, points in by_code.items():
            value = str(uniques[code])
            for pattern in rules.patterns(kind):
                windows = bursts.detect_windows(points, pattern, rules, ends=(lo, hi))
                if windows:
                    result[(kind, value, pattern)] = windows
    return result


# --- Reading for review and the Overview -------------------------------------------------------


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
    from core.access import allowed

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
