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

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from core.models import utcnow
from core.risk import detector, incidents, store
from core.risk.detector import (
    BY_TIME,
    ENTITY_COLUMNS,
    EntityKind,
    Pattern,
    Rules,
    Window,
)
from core.risk.flags import Changes, _apply, _stored
from core.risk.store import FlagRow
from core.webhook.handlers import RecordedAttempt


def attempt_hook(
    rules: Rules | Callable[[Session], Rules],
) -> Callable[[Session, RecordedAttempt], None]:
    """The `Context.on_attempt` hook for these rules (or for the rules a function gives: the
    live rule set, core.risk.rules.live)."""

    def hook(session: Session, attempt: RecordedAttempt) -> None:
        if attempt.outcome == "failed":  # a success adds nothing: no need to load the rules
            on_attempt(session, attempt, rules if isinstance(rules, Rules) else rules(session))

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
        if (value := getattr(attempt, column)) and not rules.allows(kind, value)
    ]
    if not entities:
        return Changes()
    times = [attempt.created] + ([moved] if moved is not None else [])
    lo, hi = detector.affected_range(times, rules)
    if moved is None:
        return grow(session, entities, lo, hi, rules, now=now, arrived=attempt.id)
    return refresh(session, entities, lo, hi, rules, now=now)


def _locked_flags(
    session: Session, entities: Sequence[tuple[EntityKind, str]], lo: datetime, hi: datetime
) -> dict[tuple[str, str, str], list[FlagRow]]:
    """Lock `entities` against concurrent detection, then their stored flags overlapping
    [lo, hi], by (kind, value, pattern)."""
    store.lock_entities(session, entities)
    found: dict[tuple[str, str, str], list[FlagRow]] = {}
    for row in store.find_flags(session, entities, lo, hi):
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
    arrived: str | None = None,
) -> Changes:
    """`refresh` for attempts that were only added (none moved), which only adds hits: the
    hits with right ends in [lo, hi] are recomputed from the attempts in [lo - window, hi],
    and united with the stored flags they overlap. A flag reaching outside that range is
    recounted by one aggregate query instead of reading all its attempts, which keeps the
    cost flat for busy entities (a promotion code flagged for days). Incidents follow
    (`core.risk.incidents.link_grown`) along the attempts the flags newly cover."""
    store.lock_entities(session, entities)
    near = (lo - rules.reach, hi)
    by_entity = store.read_points(session, [(entity, near) for entity in entities])
    hits: list[tuple[EntityKind, str, Pattern, list[Window]]] = []
    for kind, value in entities:
        for pattern in rules.patterns(kind):
            rule = rules.rule(kind, pattern)
            new = detector.detect_windows(by_entity[(kind, value)], pattern, rule, ends=(lo, hi))
            if new:  # else no hit changed: the stored flags stand
                hits.append((kind, value, pattern, new))
    changes = Changes()
    if not hits:  # most declines: the stored flags are not even read
        return changes
    found: dict[tuple[str, str, str], list[FlagRow]] = {}
    flagged = sorted({(kind, value) for kind, value, _p, _w in hits})
    for row in store.find_flags(session, flagged, near[0], near[1]):
        found.setdefault((row.entity_kind, row.entity_value, row.pattern), []).append(row)
    merged_into: list[tuple[list[int], list[int]]] = []
    covered: set[str] = set()
    for kind, value, pattern, new in hits:
        points = sorted(by_entity[(kind, value)], key=BY_TIME)
        times = [p.created for p in points]
        flags = found.get((kind, value, pattern), [])
        merged = detector.merge_windows(
            [(w.start, w.end) for w in new] + [(f.window_start, f.window_end) for f in flags]
        )
        windows = []
        for a, b in merged:
            if not any(a <= w.start and w.end <= b for w in new):
                continue  # a stored flag the new hits do not reach
            if near[0] <= a and b <= near[1]:
                windows.append(detector.describe(points, times, a, b))
            else:
                failures, cards = store.count_failures(session, kind, value, a, b)
                windows.append(Window(a, b, failures, cards))
        replaced = [
            f
            for f in flags
            if any(f.window_start <= w.end and w.start <= f.window_end for w in windows)
        ]
        previous = [_stored(f) for f in replaced]
        done = _apply(session, kind, value, pattern, previous, windows, now or utcnow())
        changes.add(done)
        # Attempts this key's flags hold now and did not before: the one that arrived, and
        # those a new or widened window takes in.
        for p in points:
            inside = any(w.start <= p.created <= w.end for w in new)
            before = any(f.window_start <= p.created <= f.window_end for f in flags)
            if inside and (p.id == arrived or not before):
                covered.add(p.id)
        for flag_id, w in done.windows.items():
            merged_into.append(
                (
                    [flag_id],
                    [
                        f.incident_id
                        for f in replaced
                        if f.incident_id is not None
                        and f.window_start <= w.end
                        and w.start <= f.window_end
                    ],
                )
            )
    if changes.windows:
        incidents.link_grown(session, merged_into, covered, now)
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
    any stored flag the range touches) and write the difference; then regroup the incidents
    involved (a flag may have shrunk, so an incident may split)."""
    window = rules.reach
    found = _locked_flags(session, entities, lo - window, hi)
    # Extend each range until every stored flag overlapping [x_lo - window, x_hi] lies inside
    # [x_lo, x_hi]: then replacing those flags by the recomputed hits is exact.
    ranges: dict[tuple[EntityKind, str, Pattern], tuple[datetime, datetime]] = {}
    stored: dict[tuple[EntityKind, str, Pattern], list[FlagRow]] = {}
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
                    for f in store.find_flags(session, [(kind, value)], x_lo - window, x_hi)
                    if f.pattern == pattern
                ]
            stored[(kind, value, pattern)] = flags
            ranges[(kind, value, pattern)] = (x_lo, x_hi)
    spans: dict[tuple[EntityKind, str], tuple[datetime, datetime]] = {}
    for (kind, value, _pattern), (x_lo, x_hi) in ranges.items():
        a, b = spans.get((kind, value), (x_lo, x_hi))
        spans[(kind, value)] = (min(a, x_lo), max(b, x_hi))
    by_entity = store.read_points(
        session, [(key, (a - window, b)) for key, (a, b) in spans.items()]
    )
    changes = Changes()
    involved: set[int] = set()
    for (kind, value, pattern), (x_lo, x_hi) in ranges.items():
        windows = detector.detect_windows(
            by_entity[(kind, value)], pattern, rules.rule(kind, pattern), ends=(x_lo, x_hi)
        )
        previous = [_stored(f) for f in stored[(kind, value, pattern)]]
        involved |= {f.incident_id for f in stored[(kind, value, pattern)] if f.incident_id}
        if windows or previous:
            changes.add(_apply(session, kind, value, pattern, previous, windows, now or utcnow()))
    if changes.windows or involved:
        incidents.regroup(session, changes.windows, involved, now)
    return changes
