"""Incidents: flags that share failed attempts are one attack seen through several entities (its
card, IP address, email, customer, promotion code), grouped and reviewed once.

Definition: an incident is a connected component of the stored flags, two flags being
connected when they share an attempt (a flag's attempts are its entity's failed attempts inside
its window). Like flags, it is a function of the set of attempts, so order and duplicate
deliveries cannot change it, and incremental and batch detection agree:

- batch (`group_batch`) computes the components of every flag in the recomputed range from the
  attempts it has read (no flag outside that range shares an attempt with one inside it);
- the webhook path (`link_grown`) after `grow`, which only ever adds coverage: the components
  can only merge, along the attempts a flag newly covers and along flags merged into one;
- after `refresh` (an attempt moved, so a flag may shrink and an incident split), `regroup`
  recomputes the components of the incidents involved from the database.

An incident's id is kept by the component holding its flags (the oldest id when several merge);
its status follows its flags: open while any flag is open, else confirmed if any is, else
dismissed. A reviewed incident that gains a new flag is therefore open for review again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.models import RiskFlag, RiskIncident, utcnow
from core.risk import detector, store
from core.risk.detector import ENTITY_COLUMNS, EntityKind

_KINDS: tuple[EntityKind, ...] = tuple(ENTITY_COLUMNS)


def _new_incident(session: Session, now: datetime) -> int:
    incident_id: int = session.execute(
        insert(RiskIncident)
        .values(
            status="open", first_seen=now, last_seen=now, flags=0, created_at=now, updated_at=now
        )
        .returning(RiskIncident.id)
    ).scalar_one()
    return incident_id


def refresh_summary(session: Session, incident_ids: Iterable[int], now: datetime) -> None:
    """Bring each incident's span, flag count and status up to date with its flags; drop an
    incident left without flags."""
    ids = sorted(set(incident_ids))
    if not ids:
        return
    rows = session.execute(
        select(
            RiskFlag.incident_id,
            func.min(RiskFlag.window_start),
            func.max(RiskFlag.window_end),
            func.count(),
            func.sum(case((RiskFlag.status == "open", 1), else_=0)),
            func.sum(case((RiskFlag.status == "confirmed", 1), else_=0)),
        )
        .where(RiskFlag.incident_id.in_(ids))
        .group_by(RiskFlag.incident_id)
    ).all()
    known = {
        row[0]: tuple(row[1:])
        for row in session.execute(
            select(
                RiskIncident.id,
                RiskIncident.first_seen,
                RiskIncident.last_seen,
                RiskIncident.flags,
                RiskIncident.status,
            ).where(RiskIncident.id.in_(ids))
        )
    }
    seen = set()
    changed = []
    for incident_id, first, last, count, opened, confirmed in rows:
        seen.add(incident_id)
        status = "open" if opened else "confirmed" if confirmed else "dismissed"
        if known.get(incident_id) != (first, last, count, status):
            changed.append(
                dict(b_id=incident_id, first_seen=first, last_seen=last, flags=count)
                | {"status": status, "updated_at": now}
            )
    if changed:  # one executemany; a batch rerun usually changes nothing
        table: Table = RiskIncident.__table__  # type: ignore[assignment]
        session.execute(update(table).where(table.c.id == bindparam("b_id")), changed)
    gone = [i for i in ids if i not in seen]
    if gone:
        session.execute(delete(RiskIncident).where(RiskIncident.id.in_(gone)))


def assign(
    session: Session,
    groups: Sequence[Sequence[int]],
    current: Mapping[int, int | None],
    now: datetime,
    also: Iterable[int] = (),
) -> set[int]:
    """Give each group of flag ids one incident: the oldest incident any of its flags has that
    no earlier group took, else a new one (a split keeps the review of the incident it came
    from). Returns the incidents touched."""
    taken: set[int] = set()
    touched: set[int] = {i for i in current.values() if i is not None} | set(also)
    for group in sorted(groups, key=min):
        had = sorted({i for f in group if (i := current.get(f)) is not None})
        free = [i for i in had if i not in taken]
        if free:
            target = free[0]
        else:
            target = _new_incident(session, now)
            if had:
                _copy_review(session, had[0], target)
        taken.add(target)
        moved = [f for f in group if current.get(f) != target]
        if moved:
            session.execute(
                update(RiskFlag).where(RiskFlag.id.in_(moved)).values(incident_id=target)
            )
    touched |= taken
    refresh_summary(session, touched, now)
    return taken


def drop_empty(session: Session) -> None:
    """Remove incidents no flag points at (batch runs tidy up whatever older runs left)."""
    holding = select(RiskFlag.id).where(RiskFlag.incident_id == RiskIncident.id).exists()
    session.execute(delete(RiskIncident).where(~holding))


def _copy_review(session: Session, source: int, target: int) -> None:
    old = session.get(RiskIncident, source)
    if old is not None and old.reviewed_by is not None:
        session.execute(
            update(RiskIncident)
            .where(RiskIncident.id == target)
            .values(reviewed_by=old.reviewed_by, reviewed_at=old.reviewed_at, note=old.note)
        )


def merge(
    session: Session, flag_ids: Iterable[int], incident_ids: Iterable[int], now: datetime
) -> int:
    """Make `flag_ids` and every flag of `incident_ids` one incident (they are connected)."""
    flags = sorted(set(flag_ids))
    incidents = set(incident_ids)
    if flags:
        incidents |= {
            i
            for i in session.execute(
                select(RiskFlag.incident_id).where(RiskFlag.id.in_(flags))
            ).scalars()
            if i is not None
        }
    target = min(incidents) if incidents else _new_incident(session, now)
    others = sorted(incidents - {target})
    if others:
        if (
            session.execute(
                select(RiskIncident.reviewed_by).where(RiskIncident.id == target)
            ).scalar_one_or_none()
            is None
        ):
            _copy_review(session, others[0], target)
        session.execute(
            update(RiskFlag).where(RiskFlag.incident_id.in_(others)).values(incident_id=target)
        )
    if flags:
        session.execute(update(RiskFlag).where(RiskFlag.id.in_(flags)).values(incident_id=target))
    refresh_summary(session, [target, *others], now)
    return target


def covering_flags(session: Session, rows: Sequence[tuple[Any, ...]]) -> dict[str, set[int]]:
    """For failed attempts given as store.ATTEMPT_COLUMNS rows: the stored flags holding each."""
    if not rows:
        return {}
    entities = sorted(
        {(kind, str(v)) for row in rows for kind, v in zip(_KINDS, row[2:], strict=True) if v}
    )
    times = [row[1] for row in rows]
    found = store.find_flags(session, entities, min(times), max(times))
    by_entity: dict[tuple[str, str], list[store.FlagRow]] = {}
    for flag in found:
        by_entity.setdefault((flag.entity_kind, flag.entity_value), []).append(flag)
    holding: dict[str, set[int]] = {}
    for row in rows:
        attempt_id, created = str(row[0]), row[1]
        held = holding.setdefault(attempt_id, set())
        for kind, value in zip(_KINDS, row[2:], strict=True):
            for flag in by_entity.get((kind, str(value)), []) if value else []:
                if flag.window_start <= created <= flag.window_end:
                    held.add(flag.id)
    return holding


def link_grown(
    session: Session,
    merged: Iterable[tuple[Iterable[int], Iterable[int]]],
    newly_covered: Iterable[str],
    now: datetime | None = None,
) -> None:
    """After `grow`: unite each recomputed flag with the incidents of the stored flags it
    replaced (`merged`: (flag ids, incident ids) pairs), and every flag holding an attempt that a
    flag newly covers."""
    now = now or utcnow()
    edges: list[tuple[set[int], set[int]]] = [(set(f), set(i)) for f, i in merged]
    covered = sorted(set(newly_covered))
    if covered:
        holding = covering_flags(session, store.attempts_by_id(session, covered))
        edges += [(flags, set()) for flags in holding.values() if flags]
    # union the edges into groups: nodes are ("f", id) and ("i", id)
    members: dict[tuple[str, int], list[str]] = {}
    for n, (flags, incidents) in enumerate(edges):
        for node in [*(("f", f) for f in flags), *(("i", i) for i in incidents)]:
            members.setdefault(node, []).append(str(n))
    for group in detector.components(members):
        flag_ids = [x for kind, x in group if kind == "f"]
        if flag_ids:
            merge(session, flag_ids, [x for kind, x in group if kind == "i"], now)


def regroup(
    session: Session, flag_ids: Iterable[int], incident_ids: Iterable[int], now: datetime | None
) -> None:
    """Recompute the incidents of `flag_ids` and of every flag of `incident_ids` from the
    database, following shared attempts to every flag they reach (after flags shrank)."""
    now = now or utcnow()
    start = set(flag_ids)
    incidents = set(incident_ids)
    involved = set(incidents)
    flags: dict[int, store.FlagRow] = {}
    members: dict[int, set[str]] = {}
    pending = set(start)
    while pending or incidents:
        query = select(*(getattr(RiskFlag, c.name) for c in store.FLAG_COLUMNS))
        rows = [
            store.FlagRow(*row)
            for row in session.execute(
                query.where(RiskFlag.id.in_(pending) | RiskFlag.incident_id.in_(incidents))
            )
        ]
        pending, incidents = set(), set()
        fresh = [f for f in rows if f.id not in flags]
        if not fresh:
            break
        for f in fresh:
            flags[f.id] = f
        spans: dict[tuple[EntityKind, str], tuple[datetime, datetime]] = {}
        for f in fresh:
            key = (f.entity_kind, f.entity_value)
            lo, hi = spans.get(key, (f.window_start, f.window_end))  # type: ignore[arg-type]
            spans[key] = (min(lo, f.window_start), max(hi, f.window_end))  # type: ignore[index]
        points = store.read_points(session, list(spans.items()))
        attempt_ids: set[str] = set()
        for f in fresh:
            ids = {
                p.id
                for p in points[(f.entity_kind, f.entity_value)]  # type: ignore[index]
                if f.window_start <= p.created <= f.window_end
            }
            members[f.id] = ids
            attempt_ids |= ids
        holding = covering_flags(session, store.attempts_by_id(session, sorted(attempt_ids)))
        reached: set[int] = set().union(*holding.values()) if holding else set()
        pending = {f for f in reached if f not in flags}
        incidents = {f.incident_id for f in fresh if f.incident_id is not None}
    current = {f.id: f.incident_id for f in flags.values()}
    assign(session, detector.components(members), current, now, involved)
