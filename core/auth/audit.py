"""Append-only, hash-chained audit log.

Each row's hash covers its content and the previous row's hash, so editing, deleting or
reordering any row breaks the chain from that row on, and `verify` says where.

Deleting the *newest* rows leaves a shorter chain that still verifies, so the head is also
anchored outside the database: `checkpoint` appends the newest (id, hash), signed with
AUDIT_CHECKPOINT_KEY, to an owner-only file (and the log), and `verify_anchored` checks the
chain against every checkpoint (see core/auth/anchor.py).

Personal data: the log is never rewritten (erasure keeps it, and its hashes, intact), so it
holds no customer email or IP address by construction: `record` replaces any it is given, in
the target and in every text of the details, with a keyed pseudonym (`email:1f3a…`,
`ip:9bc2…`; HMAC with AUDIT_CHECKPOINT_KEY) that still tells the same person's entries apart."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.auth.permissions import Actor
from core.models import AuditEntry, utcnow
from core.settings import get_settings

GENESIS = "0" * 64
# Serialises writers on PostgreSQL so the chain never forks (SQLite writers are serial anyway).
_CHAIN_LOCK_KEY = 0x6175646974  # "audit"


def _digest(prev_hash: str, at: datetime, fields: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"prev": prev_hash, "at": at.isoformat(), **fields},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Entry(Protocol):
    """What verification reads: an AuditEntry, or a plain row with the same columns."""

    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    target: str | None
    details: dict[str, Any]
    stripe_request_id: str | None
    idempotency_key: str | None
    prev_hash: str
    hash: str


def _fields(entry: _Entry) -> dict[str, Any]:
    return {
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
        "stripe_request_id": entry.stripe_request_id,
        "idempotency_key": entry.idempotency_key,
    }


# Emails (a masked "j***@shop.example" is left as it is) and IPv4/IPv6 candidates.
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_IP_RE = re.compile(
    r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+)(?![\w.:])"
)


def pseudonym(kind: str, value: str) -> str:
    """A keyed, stable stand-in for an email or IP address (same input, same pseudonym)."""
    key = get_settings().audit_checkpoint_key.get_secret_value().encode()
    digest = hmac.new(key, f"{kind}:{value.strip().lower()}".encode(), hashlib.sha256)
    return f"{kind}:{digest.hexdigest()[:16]}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def scrub(text: str) -> str:
    """`text` with every email and IP address replaced by its pseudonym."""
    text = _EMAIL_RE.sub(lambda m: pseudonym("email", m.group(0)), text)
    return _IP_RE.sub(
        lambda m: pseudonym("ip", m.group(0)) if _is_ip(m.group(0)) else m.group(0), text
    )


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrub_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item) for item in value]
    return value


def record(
    session: Session,
    actor: Actor,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    *,
    stripe_request_id: str | None = None,
    idempotency_key: str | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction. Never put secrets or card data in details."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_KEY})
    last = session.execute(
        select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
    ).scalar_one_or_none()
    entry = AuditEntry(
        at=at or utcnow(),
        actor=actor.username,
        role=actor.role,
        action=action,
        target=scrub(target) if target is not None else None,
        details=details or {},
        stripe_request_id=stripe_request_id,
        idempotency_key=idempotency_key,
        prev_hash=last or GENESIS,
    )
    # Round-trip details through JSON so the hash covers exactly what the database stores.
    entry.details = _scrub_value(json.loads(json.dumps(entry.details, default=str)))
    entry.hash = _digest(entry.prev_hash, entry.at, _fields(entry))
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    checked: int
    broken_at: int | None = None  # id of the first row that does not verify
    problem: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit log intact: {self.checked} entries verified"
        return f"audit log broken at entry {self.broken_at}: {self.problem}"


def verify_entries(entries: Iterable[_Entry]) -> ChainStatus:
    prev = GENESIS
    checked = 0
    for entry in entries:
        if entry.prev_hash != prev:
            return ChainStatus(
                False,
                checked,
                entry.id,
                "previous hash does not match (a row before it was changed, removed or reordered)",
            )
        if _digest(entry.prev_hash, entry.at, _fields(entry)) != entry.hash:
            return ChainStatus(False, checked, entry.id, "content does not match its hash")
        prev = entry.hash
        checked += 1
    return ChainStatus(True, checked)


def verify(session: Session) -> ChainStatus:
    """Walk the whole chain in id order."""
    # Streamed in batches (a server-side cursor on PostgreSQL), closed even on an early return.
    # Plain rows, not ORM objects: several times faster on a long log.
    result = session.execute(
        select(AuditEntry.__table__).order_by(AuditEntry.id).execution_options(yield_per=2000)
    )
    try:
        return verify_entries(result)  # rows carry the same attributes
    finally:
        result.close()


# --- Reading the log (the audit page and `python -m core audit list`) ------------------------


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditEntry]
    total: int  # rows matching the filter, over all pages


def _where(filters: AuditFilter) -> list[Any]:
    clauses: list[Any] = []
    if filters.actor:
        clauses.append(AuditEntry.actor == filters.actor)
    if filters.action:
        clauses.append(AuditEntry.action == filters.action)
    if filters.since is not None:
        clauses.append(AuditEntry.at >= filters.since)
    if filters.until is not None:
        clauses.append(AuditEntry.at < filters.until)
    return clauses


def search(
    session: Session, filters: AuditFilter, *, limit: int = 50, offset: int = 0
) -> AuditPage:
    """One page of entries matching `filters`, newest first."""
    clauses = _where(filters)
    total = session.execute(
        select(func.count()).select_from(AuditEntry).where(*clauses)
    ).scalar_one()
    rows = session.execute(
        select(AuditEntry)
        .where(*clauses)
        .order_by(AuditEntry.id.desc())
        .limit(max(1, limit))
        .offset(max(0, offset))
    ).scalars()
    return AuditPage(list(rows), int(total))


def distinct_values(session: Session, column: str) -> list[str]:
    """The actors or actions present, for filter choices."""
    attribute = {"actor": AuditEntry.actor, "action": AuditEntry.action}[column]
    return list(session.execute(select(attribute).distinct().order_by(attribute)).scalars())
