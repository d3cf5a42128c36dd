"""Every statement of core.risk that runs on the DB-API cursor (`core.db.Prepared` / `raw`):
the hot path's reads and locks, and batch detection's bulk read. The rest of core.risk goes
through the ORM session; this module is the one place that touches the cursor."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnClause, ColumnElement, TextClause, bindparam, column, select, text
from sqlalchemy.orm import Session

from core.db import Prepared, raw
from core.models import PaymentAttempt, UTCDateTime
from core.risk.detector import ENTITY_COLUMNS, EntityKind, Point

_LOCK_NAMESPACE = b"risk_flags"
GLOBAL_LOCK_KEY = 0x7269736B  # "risk": batch runs take it exclusively, entity writers shared
# What rule filters read (core.risk.detector.Filter), in Point's order after its card.
DETAIL_COLUMNS = ("amount", "currency", "decline_code", "failure_code")

FLAG_COLUMNS: tuple[ColumnClause[Any], ...] = (
    column("id"),
    column("entity_kind"),
    column("entity_value"),
    column("pattern"),
    column("window_start", UTCDateTime()),
    column("window_end", UTCDateTime()),
    column("failures"),
    column("distinct_cards"),
    column("status"),
    column("incident_id"),
)


@dataclass(frozen=True)
class FlagRow:
    id: int
    entity_kind: str
    entity_value: str
    pattern: str
    window_start: datetime
    window_end: datetime
    failures: int
    distinct_cards: int
    status: str
    incident_id: int | None = None


def _entity_lock_key(kind: str, value: str) -> int:
    digest = hashlib.blake2b(f"{kind}\x00{value}".encode(), digest_size=8, person=_LOCK_NAMESPACE)
    return int.from_bytes(digest.digest(), "big", signed=True)


@functools.lru_cache(maxsize=32)
def _flags_sql(entities: int, postgres: bool) -> Prepared:
    """Stored flags of `entities` (kind, value) pairs overlapping [:lo, :hi], locked."""
    pairs = " OR ".join(f"(entity_kind = :k{i} AND entity_value = :v{i})" for i in range(entities))
    sql = (
        f"SELECT {', '.join(c.name for c in FLAG_COLUMNS)} FROM risk_flags WHERE ({pairs}) "
        "AND window_end >= :lo AND window_start <= :hi"
    )
    return Prepared(
        text(sql + (" FOR UPDATE" if postgres else ""))
        .bindparams(bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime()))
        .columns(*FLAG_COLUMNS)
    )


def find_flags(
    session: Session, entities: Sequence[tuple[str, str]], lo: datetime, hi: datetime
) -> list[FlagRow]:
    """The stored flags of `entities` overlapping [lo, hi], locked on PostgreSQL."""
    if not entities:
        return []
    params: dict[str, Any] = {"lo": lo, "hi": hi}
    for i, (kind, value) in enumerate(entities):
        params[f"k{i}"] = kind
        params[f"v{i}"] = value
    cursor = raw(session)
    statement = _flags_sql(len(entities), cursor.dialect.name == "postgresql")
    return [FlagRow(*row) for row in cursor.rows(statement, params)]


@functools.lru_cache(maxsize=8)
def _lock_sql(keys: int) -> Prepared:
    calls = ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(keys))
    return Prepared(text(f"SELECT pg_advisory_xact_lock_shared(:g), {calls}"))


def lock_entities(session: Session, entities: Sequence[tuple[EntityKind, str]]) -> None:
    """On PostgreSQL, a transaction-scoped advisory lock per entity (and the shared global one
    that batch runs take exclusively)."""
    cursor = raw(session)
    if cursor.dialect.name == "postgresql":
        lock_keys = sorted({_entity_lock_key(k, v) for k, v in entities})
        cursor.execute(
            _lock_sql(len(lock_keys)),
            {"g": GLOBAL_LOCK_KEY, **{f"k{i}": k for i, k in enumerate(lock_keys)}},
        )


@functools.lru_cache(maxsize=64)
def _points_sql(kinds: tuple[EntityKind, ...]) -> Prepared:
    """Failed attempts of one value per kind over a range each; rows tagged by position."""
    parts = [
        f"SELECT {i} AS tag, id, created, card_fingerprint, {', '.join(DETAIL_COLUMNS)} "
        "FROM payment_attempts "
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
            *(column(c) for c in DETAIL_COLUMNS),
        )
    )


def read_points(
    session: Session, spans: Sequence[tuple[tuple[EntityKind, str], tuple[datetime, datetime]]]
) -> dict[tuple[EntityKind, str], list[Point]]:
    """Each entity's failed attempts within its span, in one statement."""
    params: dict[str, Any] = {}
    for i, ((_kind, value), (a, b)) in enumerate(spans):
        params.update({f"v{i}": value, f"lo{i}": a, f"hi{i}": b})
    points: list[list[Point]] = [[] for _ in spans]
    statement = _points_sql(tuple(kind for (kind, _value), _span in spans))
    for tag, attempt_id, created, card, *details in raw(session).rows(statement, params):
        points[tag].append(Point(created, attempt_id, card, *details))
    return {key: pts for (key, _span), pts in zip(spans, points, strict=True)}


@functools.lru_cache(maxsize=8)
def _count_sql(kind: EntityKind) -> TextClause:
    return text(
        "SELECT count(*), count(DISTINCT card_fingerprint) FROM payment_attempts "
        f"WHERE {ENTITY_COLUMNS[kind]} = :v AND outcome = 'failed' "
        "AND created >= :lo AND created <= :hi"
    ).bindparams(bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime()))


def count_failures(
    session: Session, kind: EntityKind, value: str, lo: datetime, hi: datetime
) -> tuple[int, int]:
    """(failed attempts, distinct cards) of one entity in [lo, hi]."""
    failures, cards = session.execute(_count_sql(kind), {"v": value, "lo": lo, "hi": hi}).one()
    return int(failures), int(cards)


ATTEMPT_COLUMNS = ("id", "created", *ENTITY_COLUMNS.values())


@functools.lru_cache(maxsize=16)
def _attempts_sql(count: int) -> Prepared:
    names = ", ".join(f":a{i}" for i in range(count))
    return Prepared(
        text(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM payment_attempts "
            f"WHERE id IN ({names}) AND outcome = 'failed'"
        ).columns(
            column("id"),
            column("created", UTCDateTime()),
            *(column(c) for c in ENTITY_COLUMNS.values()),
        )
    )


def attempts_by_id(session: Session, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """(id, created, card, customer, email, ip, promotion code) of failed attempts `ids`."""
    rows: list[tuple[Any, ...]] = []
    cursor = raw(session)
    for start in range(0, len(ids), 16):
        chunk = list(ids[start : start + 16])
        chunk += [chunk[-1]] * (16 - len(chunk))  # one statement shape for every chunk
        rows += cursor.rows(_attempts_sql(16), {f"a{i}": v for i, v in enumerate(chunk)})
    return list({row[0]: row for row in rows}.values())


def failed_rows(
    session: Session, lo: datetime | None, hi: datetime | None, *, details: bool = False
) -> list[Any]:
    """Every failed attempt in [lo, hi] as the driver's own rows (ATTEMPT_COLUMNS, then
    DETAIL_COLUMNS with `details`), read column by column by batch detection: no Row, ORM or
    DataFrame object per attempt."""
    conditions: list[ColumnElement[bool]] = [PaymentAttempt.outcome == "failed"]
    if lo is not None:
        conditions.append(PaymentAttempt.created >= lo)
    if hi is not None:
        conditions.append(PaymentAttempt.created <= hi)
    names = ATTEMPT_COLUMNS + (DETAIL_COLUMNS if details else ())
    columns = [getattr(PaymentAttempt, c) for c in names]
    result = session.connection().execute(select(*columns).where(*conditions))
    return list(result.cursor.fetchall())
