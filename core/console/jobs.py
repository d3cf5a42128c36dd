"""Long operator jobs that run once at a time, with their progress visible everywhere.

One `jobs` row per job name is its lock. `claim` takes it atomically with a conditional
UPDATE (PostgreSQL and SQLite both make one of two racing claims win): only when the job is
not running, or its heartbeat is older than `stale_after` (the process that ran it died).
The claim carries the request's token: the same request claiming again (a double click, a
rerun) is told it already started, and does not start a second run. Progress updates the
heartbeat. The caller owns nothing here: every call is its own short transaction, so every
session and process sees the state as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, Engine, or_, select, update

from core.db import insert_ignore, session_scope
from core.models import Job, utcnow

STALE_AFTER = timedelta(minutes=10)
Claimed = Literal["started", "already", "busy"]


@dataclass(frozen=True)
class JobState:
    name: str
    status: str  # idle | running | done | failed
    started_by: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    step: str | None
    done: int
    total: int | None
    result: tuple[str, ...]

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def fraction(self) -> float:
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, self.done / self.total))

    def describe(self) -> str:
        when = f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC" if self.started_at else "?"
        return f"started by {self.started_by} at {when}"


def _state(row: Job) -> JobState:
    return JobState(
        row.name,
        row.status,
        row.started_by,
        row.started_at,
        row.heartbeat_at,
        row.finished_at,
        row.step,
        row.done,
        row.total,
        tuple(row.result or ()),
    )


def state(engine: Engine, name: str) -> JobState | None:
    with session_scope(engine, write=False) as session:
        row = session.get(Job, name)
        return _state(row) if row is not None else None


def claim(
    engine: Engine,
    name: str,
    actor: str,
    token: str,
    *,
    now: datetime | None = None,
    stale_after: timedelta = STALE_AFTER,
) -> tuple[Claimed, JobState]:
    """Take the lock of job `name` for the request `token`: "started" (it is ours, run it),
    "already" (this request started it before: do nothing) or "busy" (someone else runs it)."""
    now = now or utcnow()
    with session_scope(engine) as session:
        insert_ignore(session, Job, {"name": name, "status": "idle", "done": 0}, ["name"])
        taken = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(
                    Job.name == name,
                    or_(Job.token.is_(None), Job.token != token),
                    or_(Job.status != "running", Job.heartbeat_at < now - stale_after),
                )
                .values(
                    status="running",
                    token=token,
                    started_by=actor,
                    started_at=now,
                    heartbeat_at=now,
                    finished_at=None,
                    step="starting",
                    done=0,
                    total=None,
                    result=None,
                )
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        row = session.execute(select(Job).where(Job.name == name)).scalar_one()
        session.refresh(row)
        current = _state(row)
        if taken:
            return "started", current
        return ("already" if row.token == token else "busy"), current


def progress(
    engine: Engine, name: str, token: str, step: str, done: int, total: int | None
) -> None:
    """Record how far the run of `token` is (and that it is alive)."""
    with session_scope(engine) as session:
        session.execute(
            update(Job)
            .where(Job.name == name, Job.token == token, Job.status == "running")
            .values(step=step[:255], done=done, total=total, heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def finish(engine: Engine, name: str, token: str, *, ok: bool, result: list[str]) -> None:
    """Release the lock with the run's outcome (kept for every session to read)."""
    with session_scope(engine) as session:
        session.execute(
            update(Job)
            .where(Job.name == name, Job.token == token)
            .values(
                status="done" if ok else "failed",
                finished_at=utcnow(),
                heartbeat_at=utcnow(),
                step="finished" if ok else "failed",
                result=result,
            )
            .execution_options(synchronize_session=False)
        )
