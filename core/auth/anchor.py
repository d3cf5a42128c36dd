"""The audit chain's head, anchored outside the database.

A hash chain shows any changed, removed or reordered row *before* its newest row, but not the
removal of its newest rows: what is left is a shorter chain that still verifies. So a cron
job (`python -m core audit checkpoint`) appends the newest entry's id and hash, signed with
AUDIT_CHECKPOINT_KEY (HMAC-SHA256), to a file the database cannot rewrite
(AUDIT_CHECKPOINT_PATH, owner-only, append-only by this code) and to the log. `verify`
then checks the chain and every checkpoint against it: a checkpointed entry that is gone, or
whose hash changed, is reported, with how many rows after it are missing.

What it cannot show: rows written and deleted between two checkpoints, and anything done by
someone who also holds the key and the file. Ship the file (or the log lines) to another
host for the strongest guarantee.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.auth import audit
from core.models import AuditEntry, utcnow
from core.settings import get_settings

log = logging.getLogger("core.audit")


class CheckpointError(Exception):
    """The checkpoint file cannot be written or read; the message is safe to show."""


@dataclass(frozen=True)
class Checkpoint:
    entry_id: int
    hash: str
    entries: int  # rows in the log when it was taken
    at: datetime

    def body(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "hash": self.hash,
            "entries": self.entries,
            "at": self.at.isoformat(),
        }


def _sign(body: dict[str, Any]) -> str:
    key = get_settings().audit_checkpoint_key.get_secret_value().encode()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def take(session: Session, *, now: datetime | None = None) -> Checkpoint | None:
    """The newest entry as a checkpoint; None while the log is empty."""
    newest = session.execute(
        select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    if newest is None:
        return None
    count = session.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
    return Checkpoint(int(newest.id), str(newest.hash), int(count), now or utcnow())


def write(checkpoint: Checkpoint, path: Path | None = None) -> Path:
    """Append the signed checkpoint as one JSON line (file created owner-only) and log it."""
    path = path or get_settings().audit_checkpoint_path
    line = json.dumps({**checkpoint.body(), "sig": _sign(checkpoint.body())}, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise CheckpointError(f"Cannot write the checkpoint file {path}: {exc.strerror}.") from None
    log.info("audit checkpoint %s", line)
    return path


def read(path: Path | None = None) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints whose signature holds, and a problem for each line that does not."""
    path = path or get_settings().audit_checkpoint_path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise CheckpointError(f"Cannot read the checkpoint file {path}: {exc.strerror}.") from None
    found: list[Checkpoint] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            body = {name: data[name] for name in ("id", "hash", "entries", "at")}
            good = hmac.compare_digest(str(data["sig"]), _sign(body))
            point = Checkpoint(
                int(body["id"]),
                str(body["hash"]),
                int(body["entries"]),
                datetime.fromisoformat(str(body["at"])),
            )
        except (ValueError, KeyError, TypeError):
            problems.append(f"checkpoint line {number} is not a checkpoint")
            continue
        if not good:
            problems.append(f"checkpoint line {number} has a bad signature (forged or other key)")
            continue
        found.append(point)
    return found, problems


@dataclass(frozen=True)
class AnchoredStatus:
    chain: audit.ChainStatus
    checkpoints: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems

    def describe(self) -> str:
        lines = [self.chain.describe()]
        if self.checkpoints:
            lines.append(f"{self.checkpoints} checkpoint(s) checked")
        return "\n".join([*lines, *self.problems])

    @property
    def warning(self) -> str | None:
        if self.checkpoints:
            return None
        return (
            "no checkpoint yet: deleting the newest entries cannot be detected "
            "(run `python -m core audit checkpoint` from cron)"
        )


def verify(session: Session, path: Path | None = None) -> AnchoredStatus:
    """The hash chain, then each checkpoint against it: the entry it names must still be
    there with the same hash; if the log now ends before it, its newest rows were deleted."""
    chain = audit.verify(session)
    checkpoints, problems = read(path)
    if not checkpoints:
        return AnchoredStatus(chain, 0, problems)
    newest = session.execute(select(func.max(AuditEntry.id))).scalar_one_or_none() or 0
    wanted = sorted({point.entry_id for point in checkpoints})
    hashes: dict[int, str] = {}
    for start in range(0, len(wanted), 500):
        rows = session.execute(
            select(AuditEntry.id, AuditEntry.hash).where(
                AuditEntry.id.in_(wanted[start : start + 500])
            )
        ).all()
        hashes.update({int(row.id): str(row.hash) for row in rows})
    latest = max(checkpoints, key=lambda point: point.entry_id)
    if latest.entry_id > newest:
        problems.append(
            f"the newest entries were deleted: the checkpoint of {latest.at:%Y-%m-%d %H:%M} UTC "
            f"recorded entry {latest.entry_id}, but the log now ends at entry {newest} "
            f"({latest.entry_id - newest} or more entries missing)"
        )
    for point in sorted(checkpoints, key=lambda p: p.entry_id):
        stored = hashes.get(point.entry_id)
        if stored is None and point.entry_id <= newest:
            problems.append(f"entry {point.entry_id} (checkpointed) is missing from the log")
        elif stored is not None and stored != point.hash:
            problems.append(
                f"entry {point.entry_id} differs from its checkpoint of {point.at:%Y-%m-%d %H:%M}"
                " UTC (rewritten, or deleted and replaced)"
            )
    return AnchoredStatus(chain, len(checkpoints), problems)
