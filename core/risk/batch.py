"""Risk flags: feeding core.risk.detector from payment_attempts and keeping risk_flags equal to it.

Two entry points give the same flags for the same attempts (see core.risk.detector for why):

- `on_attempt` runs inside the webhook transaction after each recorded attempt. It re-derives
  only the neighbourhood the attempt can change: two indexed queries for that attempt's
  entities (stored flags near it, the entity's failed attempts in the range), no network.
  A new attempt only adds hits, so `grow` unites the recomputed windows with the stored flags;
  an attempt whose time moved earlier (its charge arrived after its PaymentIntent) can also
  remove hits, so `refresh` recomputes every stored flag the change touches.
- `detect_period` (`python -m core bursts`) recomputes every entity over a period.

Both replace the stored flags of the recomputed range with the recomputed windows
(`core.risk.detector.reconcile`): a flag keeps its id and review when it grows; a dismissed
flag that gains failures is opened again for review. On PostgreSQL a transaction-scoped advisory
lock
per entity (shared by batch runs, which take it exclusively) serialises concurrent writers of
one entity's flags, so two concurrent deliveries cannot each miss the other's attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import (
    ColumnElement,
    select,
    text,
)
from sqlalchemy.orm import Session

from core.models import RiskFlag, utcnow
from core.risk import batch, detector, incidents, store
from core.risk.detector import (
    ENTITY_COLUMNS,
    Point,
    Rules,
    Stored,
    Window,
)
from core.risk.flags import (
    Changes,
    _apply,
    _is_postgres,
    _stored,
)
from core.risk.store import FLAG_COLUMNS, GLOBAL_LOCK_KEY, FlagRow


@dataclass(frozen=True)
class BatchResult:
    attempts: int
    entities: int
    flags: int
    changes: Changes
    incidents: int = 0


@dataclass(frozen=True)
class _Failed:
    """Failed attempts as columns: ids, times in microseconds since the epoch, entities, and
    (when read for filtered rules) store.DETAIL_COLUMNS."""

    ids: Sequence[str]
    times: npt.NDArray[np.int64]
    columns: dict[str, Sequence[Any]]
    details: bool = False
    # per entity column, its values factorised (codes, uniques): shared by the rule sets of a
    # backtest, which read the same attempts
    _factorised: dict[str, tuple[Any, Any]] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def factorised(self, name: str) -> tuple[npt.NDArray[np.int64], Any]:
        if name not in self._factorised:
            self._factorised[name] = pd.factorize(np.array(self.columns[name], dtype=object))
        return self._factorised[name]

    def point(self, i: int, at: datetime) -> Point:
        card = self.columns["card_fingerprint"][i]
        if not self.details:
            return Point(at, self.ids[i], card)
        return Point(at, self.ids[i], card, *(self.columns[c][i] for c in store.DETAIL_COLUMNS))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_failed(
    session: Session, lo: datetime | None, hi: datetime | None, *, details: bool = False
) -> _Failed:
    names = store.ATTEMPT_COLUMNS + (store.DETAIL_COLUMNS if details else ())
    rows = store.failed_rows(session, lo, hi, details=details)
    # one list per column (zip(*rows) is three times slower on 150,000 rows)
    columns = [[r[i] for r in rows] for i in range(len(names))]
    ids, created = columns[0], columns[1]
    if created and isinstance(created[0], str):  # SQLite stores UTC as ISO text
        times = np.array(created, dtype="datetime64[us]").astype(np.int64)
    else:
        times = np.array(
            [(t - _EPOCH) // timedelta(microseconds=1) for t in created], dtype=np.int64
        )
    return _Failed(
        ids=ids,
        times=times,
        columns=dict(zip(names[2:], columns[2:], strict=True)),
        details=details,
    )


def _flag_rows(session: Session, lo: datetime | None, hi: datetime | None) -> list[FlagRow]:
    bounds: list[ColumnElement[bool]] = []
    if lo is not None:
        bounds.append(RiskFlag.window_end >= lo)
    if hi is not None:
        bounds.append(RiskFlag.window_start <= hi)
    columns = [getattr(RiskFlag, c.name) for c in FLAG_COLUMNS]
    rows = session.execute(select(*columns).where(*bounds).with_for_update())
    return [FlagRow(*row) for row in rows]


def detect_period(
    session: Session,
    rules: Rules,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime | None = None,
    keep_reviewed: bool = False,
) -> BatchResult:
    """Recompute every entity's flags for hits with right ends in [since, until] (None:
    unbounded) and their incidents, and write the difference; equal to what incremental
    detection stored. `keep_reviewed` (after a rule change): reviewed flags the rules no longer
    support stay, as records of decisions."""
    now = now or utcnow()
    window = rules.reach
    if _is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:g)"), {"g": GLOBAL_LOCK_KEY})
    x_lo, x_hi = since, until
    while True:  # extend the range over every stored flag it touches
        flags = _flag_rows(session, None if x_lo is None else x_lo - window, x_hi)
        new_lo = None if x_lo is None else min([x_lo, *(f.window_start for f in flags)])
        new_hi = None if x_hi is None else max([x_hi, *(f.window_end for f in flags)])
        if (new_lo, new_hi) == (x_lo, x_hi):
            break
        x_lo, x_hi = new_lo, new_hi
    failed = _read_failed(
        session, None if x_lo is None else x_lo - window, x_hi, details=rules.filtered
    )
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
        changes.add(
            _apply(
                session,
                kind,
                value,
                pattern,
                stored.get(key, []),
                windows,
                now,
                keep_reviewed=keep_reviewed,
            )
        )
    groups = _group(failed, flags, changes)
    # Removed flags are left out: SQLite may give a new flag the id of one just deleted, and
    # that new row has no incident yet whatever the deleted one had.
    gone = set(changes.removed)
    current = {f.id: f.incident_id for f in flags if f.id not in gone}
    incidents.assign(session, groups, current, now)
    incidents.drop_empty(session)
    return BatchResult(len(failed), entities, flag_count, changes, len(groups))


def _group(failed: _Failed, stored: list[FlagRow], changes: Changes) -> list[list[int]]:
    """Incidents of the flags in the range: components over shared attempts. Recomputed flags
    carry their attempts; a reviewed flag kept after a rule change is looked up in `failed`."""
    members: dict[int, tuple[str, ...]] = {
        flag_id: w.attempt_ids for flag_id, w in changes.windows.items()
    }
    removed = set(changes.removed)
    for f in stored:
        if f.id in members or f.id in removed:
            continue
        values = failed.columns[ENTITY_COLUMNS[f.entity_kind]]  # type: ignore[index]
        lo = (f.window_start - _EPOCH) // timedelta(microseconds=1)
        hi = (f.window_end - _EPOCH) // timedelta(microseconds=1)
        rows = np.flatnonzero((failed.times >= lo) & (failed.times <= hi))
        members[f.id] = tuple(failed.ids[i] for i in rows.tolist() if values[i] == f.entity_value)
    return detector.components(members)


def _windows_by_entity(
    failed: _Failed, rules: Rules, lo: datetime | None, hi: datetime | None
) -> dict[tuple[str, str, str], list[Window]]:
    """Flags per (kind, value, pattern). A vectorised pre-filter keeps only the entities that
    have enough failures within one window to be flagged at all; the flags themselves come
    from `detector.detect_windows`, the same function the incremental path uses."""
    result: dict[tuple[str, str, str], list[Window]] = {}
    if not len(failed):
        return result
    for kind, name in ENTITY_COLUMNS.items():
        codes, uniques = failed.factorised(name)
        present = codes >= 0
        kind_rules = [rules.rule(kind, p) for p in rules.patterns(kind)]
        minimum = min(r.minimum(p) for r, p in zip(kind_rules, rules.patterns(kind), strict=True))
        window_us = max(r.window for r in kind_rules) // timedelta(microseconds=1)
        dense = batch.dense_entities(
            codes[present].astype(np.int64), failed.times[present], minimum, window_us
        )
        if len(dense) == 0:
            continue
        rows = np.flatnonzero(np.isin(codes, dense))
        rows = rows[np.argsort(failed.times[rows], kind="stable")]  # each entity's points in order
        moments = pd.to_datetime(failed.times[rows], unit="us", utc=True).to_pydatetime()
        by_code: dict[int, list[Point]] = {}
        for i, code, at in zip(rows.tolist(), codes[rows].tolist(), moments, strict=True):
            by_code.setdefault(code, []).append(failed.point(i, at))
        for code, points in by_code.items():
            value = str(uniques[code])
            if rules.allows(kind, value):
                continue
            for pattern in rules.patterns(kind):
                rule = rules.rule(kind, pattern)
                windows = detector.detect_windows(
                    points, pattern, rule, ends=(lo, hi), in_order=True
                )
                if windows:
                    result[(kind, value, pattern)] = windows
    return result


def dense_entities(
    codes: npt.NDArray[np.int64], times: npt.NDArray[np.int64], minimum: int, window: int
) -> npt.NDArray[np.int64]:
    """Entity codes having at least `minimum` attempts within some closed window of length
    `window` (same unit as `times`). A necessary condition for any flag, so batch detection
    only runs `detect_windows` on these entities; the flags themselves come from it alone."""
    if len(codes) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((times, codes))
    c, t = codes[order], times[order]
    if minimum <= 1:
        return np.unique(c)
    lag = minimum - 1
    same = c[lag:] == c[:-lag]
    dense = same & (t[lag:] - t[:-lag] <= window)
    result: npt.NDArray[np.int64] = np.unique(c[lag:][dense])
    return result
