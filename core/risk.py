"""Risk flags: feeding core.bursts from payment_attempts and keeping risk_flags equal to it.

Two entry points give the same flags for the same attempts (see core.bursts for why):

- `on_attempt` runs inside the webhook transaction after each recorded attempt. It re-derives
  only the neighbourhood the attempt can change: two indexed queries for that attempt's
  entities (stored flags near it, the entity's failed attempts in the range), no network.
  A new attempt only adds hits, so `grow` unites the recomputed windows with the stored flags;
  an attempt whose time moved earlier (its charge arrived after its PaymentIntent) can also
  remove hits, so `refresh` recomputes every stored flag the change touches.
- `detect_period` (`python -m core bursts`) recomputes every entity over a period.

Both replace the stored flags of the recomputed range with the recomputed windows
(`core.bursts.reconcile`): a flag keeps its id and review when it grows; a dismissed flag that
gains failures is opened again for review. On PostgreSQL a transaction-scoped advisory lock
per entity (shared by batch runs, which take it exclusively) serialises concurrent writers of
one entity's flags, so two concurrent deliveries cannot each miss the other's attempt.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    TextClause,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from core import audit, bursts
from core.access import Actor, mask_email, require
from core.bursts import BY_TIME, ENTITY_COLUMNS, EntityKind, Pattern, Point, Rules, Stored, Window
from core.db import Prepared, raw
from core.handlers import RecordedAttempt
from core.models import PaymentAttempt, RiskFlag, UTCDateTime, utcnow
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


# --- Reading (fixed SQL shapes, built once: the webhook path pays no statement compilation) --


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


@functools.lru_cache(maxsize=64)
def _points_sql(kinds: tuple[EntityKind, ...]) -> Prepared:
    """Failed attempts of one value per kind over a range each; rows tagged by position."""
    parts = [
        f"SELECT {i} AS tag, id, created, card_fingerprint FROM payment_attempts "
        f"WHERE {ENTITY_COLUMNS[kind]} = :v{i} AND outcome = 'failed' "
        f"AND created >= :lo{i} AND created <= :hi{i}"
        for i, kind in enumerate(kinds)
    ]
    binds = [
        bindparam(f"{name}{i}", type_=UTCDateTime())
        for i in range(len(kinds))
        for name in ("lo", "hi")
    ]
    return Prepared(
        text(" UNION ALL ".join(parts))
        .bindparams(*binds)
        .columns(
            column("tag"),
            column("id"),
            column("created", UTCDateTime()),
            column("card_fingerprint"),
        )
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


def attempt_hook(rules: Rules) -> Callable[[Session, RecordedAttempt], None]:
    """The `Context.on_attempt` hook for these rules."""

    def hook(session: Session, attempt: RecordedAttempt) -> None:
        on_attempt(session, attempt, rules)

    return hook


def on_attempt(
    session: Session, attempt: RecordedAttempt, rules: Rules, now: datetime | None = None
) -> Changes:
    """Bring the flags of `attempt`'s entities up to date, inside the caller's transaction."""
    if attempt.outcome != "failed":
        return Changes()  # outcomes never change, so a success adds nothing to any window
    # An attempt moved earlier (its charge arrived after its PaymentIntent) can also lose hits
    # around its old time: those are recomputed too.
    moved = attempt.moved_from
    entities = [
        (kind, value)
        for kind, column in ENTITY_COLUMNS.items()
        if (value := getattr(attempt, column))
    ]
    if not entities:
        return Changes()
    times = [attempt.created] + ([moved] if moved is not None else [])
    lo, hi = bursts.affected_range(times, rules)
    if moved is None:
        return grow(session, entities, lo, hi, rules, now=now)
    return refresh(session, entities, lo, hi, rules, now=now)


@functools.lru_cache(maxsize=8)
def _count_sql(kind: EntityKind) -> TextClause:
    return text(
        "SELECT count(*), count(DISTINCT card_fingerprint) FROM payment_attempts "
        f"WHERE {ENTITY_COLUMNS[kind]} = :v AND outcome = 'failed' "
        "AND created >= :lo AND created <= :hi"
    ).bindparams(bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime()))


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


def _read_points(
    session: Session, spans: Sequence[tuple[tuple[EntityKind, str], tuple[datetime, datetime]]]
) -> dict[tuple[EntityKind, str], list[Point]]:
    params: dict[str, Any] = {}
    for i, ((_kind, value), (a, b)) in enumerate(spans):
        params.update({f"v{i}": value, f"lo{i}": a, f"hi{i}": b})
    points: list[list[Point]] = [[] for _ in spans]
    statement = _points_sql(tuple(kind for (kind, _value), _span in spans))
    for tag, attempt_id, created, card in raw(session).rows(statement, params):
        points[tag].append(Point(created, attempt_id, card))
    return {key: pts for (key, _span), pts in zip(spans, points, strict=True)}


def _locked_flags(
    session: Session, entities: Sequence[tuple[EntityKind, str]], lo: datetime, hi: datetime
) -> dict[tuple[str, str, str], list[_FlagRow]]:
    """Lock `entities` against concurrent detection, then their stored flags overlapping
    [lo, hi], by (kind, value, pattern)."""
    _lock_entities(session, entities)
    found: dict[tuple[str, str, str], list[_FlagRow]] = {}
    for row in _find_flags(session, entities, lo, hi):
        found.setdefault((row.entity_kind, row.entity_value, row.pattern), []).append(row)
    return found


def grow(
    session: Session,
    entities: Sequence[tuple[EntityKind, str]],
    lo: datetime,
    hi: datetime,
    rules: Rules,
    *,
    now: datetime | None = None,
) -> Changes:
    """`refresh` for attempts that were only added (none moved), which only adds hits: the
    hits with right ends in [lo, hi] are recomputed from the attempts in [lo - window, hi],
    and united with the stored flags they overlap. A flag reaching outside that range is
    recounted by one aggregate query instead of reading all its attempts, which keeps the
    cost flat for busy entities (a promotion code flagged for days)."""
    window = rules.window
    found = _locked_flags(session, entities, lo - window, hi)
    near = (lo - window, hi)
    by_entity = _read_points(session, [(entity, near) for entity in entities])
    changes = Changes()
    for kind, value in entities:
        points = sorted(by_entity[(kind, value)], key=BY_TIME)
        times = [p.created for p in points]
        for pattern in rules.patterns(kind):
            new = bursts.detect_windows(points, pattern, rules, ends=(lo, hi))
            if not new:
                continue  # no hit changed: the stored flags stand
            flags = found.get((kind, value, pattern), [])
            merged = bursts.merge_windows(
                [(w.start, w.end) for w in new] + [(f.window_start, f.window_end) for f in flags]
            )
            windows = []
            for a, b in merged:
                if not any(a <= w.start and w.end <= b for w in new):
                    continue  # a stored flag the new hits do not reach
                if near[0] <= a and b <= near[1]:
                    windows.append(bursts.describe(points, times, a, b))
                else:
                    failures, cards = session.execute(
                        _count_sql(kind), {"v": value, "lo": a, "hi": b}
                    ).one()
                    windows.append(Window(a, b, int(failures), int(cards)))
            previous = [
                _stored(f)
                for f in flags
                if any(f.window_start <= w.end and w.start <= f.window_end for w in windows)
            ]
            changes.add(_apply(session, kind, value, pattern, previous, windows, now or utcnow()))
    return changes


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
    window = rules.window
    found = _locked_flags(session, entities, lo - window, hi)
    # Extend each range until every stored flag overlapping [x_lo - window, x_hi] lies inside
    # [x_lo, x_hi]: then replacing those flags by the recomputed hits is exact.
    ranges: dict[tuple[EntityKind, str, Pattern], tuple[datetime, datetime]] = {}
    stored: dict[tuple[EntityKind, str, Pattern], list[_FlagRow]] = {}
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
                flags = [
                    f
                    for f in _find_flags(session, [(kind, value)], x_lo - window, x_hi)
                    if f.pattern == pattern
                ]
            stored[(kind, value, pattern)] = flags
            ranges[(kind, value, pattern)] = (x_lo, x_hi)
    spans: dict[tuple[EntityKind, str], tuple[datetime, datetime]] = {}
    for (kind, value, _pattern), (x_lo, x_hi) in ranges.items():
        a, b = spans.get((kind, value), (x_lo, x_hi))
        spans[(kind, value)] = (min(a, x_lo), max(b, x_hi))
    by_entity = _read_points(session, [(key, (a - window, b)) for key, (a, b) in spans.items()])
    changes = Changes()
    for (kind, value, pattern), (x_lo, x_hi) in ranges.items():
        windows = bursts.detect_windows(by_entity[(kind, value)], pattern, rules, ends=(x_lo, x_hi))
        previous = [_stored(f) for f in stored[(kind, value, pattern)]]
        if windows or previous:
            changes.add(_apply(session, kind, value, pattern, previous, windows, now or utcnow()))
    return changes


# --- Batch: a period ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    attempts: int
    entities: int
    flags: int
    changes: Changes


_ATTEMPT_COLUMNS = ("id", "created", *ENTITY_COLUMNS.values())


@dataclass(frozen=True)
class _Failed:
    """Failed attempts as columns: ids, times in microseconds since the epoch, entities."""

    ids: list[str]
    times: npt.NDArray[np.int64]
    columns: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(self.ids)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_failed(session: Session, lo: datetime | None, hi: datetime | None) -> _Failed:
    conditions: list[ColumnElement[bool]] = [PaymentAttempt.outcome == "failed"]
    if lo is not None:
        conditions.append(PaymentAttempt.created >= lo)
    if hi is not None:
        conditions.append(PaymentAttempt.created <= hi)
    columns = [getattr(PaymentAttempt, c) for c in _ATTEMPT_COLUMNS]
    result = session.connection().execute(select(*columns).where(*conditions))
    # The driver's own rows, read column by column: no Row, ORM or DataFrame object per attempt.
    rows = result.cursor.fetchall()
    created = [r[1] for r in rows]
    if created and isinstance(created[0], str):  # SQLite stores UTC as ISO text
        times = np.array(created, dtype="datetime64[us]").astype(np.int64)
    else:
        times = np.array(
            [(t - _EPOCH) // timedelta(microseconds=1) for t in created], dtype=np.int64
        )
    return _Failed(
        ids=[r[0] for r in rows],
        times=times,
        columns={c: [r[i] for r in rows] for i, c in enumerate(_ATTEMPT_COLUMNS) if i >= 2},
    )


def _flag_rows(session: Session, lo: datetime | None, hi: datetime | None) -> list[_FlagRow]:
    bounds: list[ColumnElement[bool]] = []
    if lo is not None:
        bounds.append(RiskFlag.window_end >= lo)
    if hi is not None:
        bounds.append(RiskFlag.window_start <= hi)
    columns = [getattr(RiskFlag, c.name) for c in _FLAG_COLUMNS]
    rows = session.execute(select(*columns).where(*bounds).with_for_update())
    return [_FlagRow(*row) for row in rows]


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
        flags = _flag_rows(session, None if x_lo is None else x_lo - window, x_hi)
        new_lo = None if x_lo is None else min([x_lo, *(f.window_start for f in flags)])
        new_hi = None if x_hi is None else max([x_hi, *(f.window_end for f in flags)])
        if (new_lo, new_hi) == (x_lo, x_hi):
            break
        x_lo, x_hi = new_lo, new_hi
    failed = _read_failed(session, None if x_lo is None else x_lo - window, x_hi)
    stored: dict[tuple[str, str, str], list[Stored]] = {}
    for f in flags:
        stored.setdefault((f.entity_kind, f.entity_value, f.pattern), []).append(_stored(f))
    computed = _windows_by_entity(failed, rules, x_lo, x_hi)
    changes = Changes()
    entities = 0
    flag_count = 0
    for key in sorted(set(stored) | set(computed)):
        kind, value, pattern = key
        windows = computed.get(key, [])
        flag_count += len(windows)
        entities += 1
        changes.add(_apply(session, kind, value, pattern, stored.get(key, []), windows, now))
    return BatchResult(len(failed), entities, flag_count, changes)


def _windows_by_entity(
    failed: _Failed, rules: Rules, lo: datetime | None, hi: datetime | None
) -> dict[tuple[str, str, str], list[Window]]:
    """Flags per (kind, value, pattern). A vectorised pre-filter keeps only the entities that
    have enough failures within one window to be flagged at all; the flags themselves come
    from `bursts.detect_windows`, the same function the incremental path uses."""
    result: dict[tuple[str, str, str], list[Window]] = {}
    if not len(failed):
        return result
    window_us = rules.window // timedelta(microseconds=1)
    cards = failed.columns["card_fingerprint"]
    for kind, name in ENTITY_COLUMNS.items():
        codes, uniques = pd.factorize(np.array(failed.columns[name], dtype=object))
        present = codes >= 0
        minimum = min(rules.minimum(p) for p in rules.patterns(kind))
        dense = bursts.dense_entities(
            codes[present].astype(np.int64), failed.times[present], minimum, window_us
        )
        if len(dense) == 0:
            continue
        rows = np.flatnonzero(np.isin(codes, dense))
        rows = rows[np.argsort(failed.times[rows], kind="stable")]  # each entity's points in order
        moments = pd.to_datetime(failed.times[rows], unit="us", utc=True).to_pydatetime()
        by_code: dict[int, list[Point]] = {}
        for i, code, at in zip(rows.tolist(), codes[rows].tolist(), moments, strict=True):
            by_code.setdefault(code, []).append(Point(at, failed.ids[i], cards[i]))
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
