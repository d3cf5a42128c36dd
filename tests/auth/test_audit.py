"""The hash-chained audit log: tampering of every kind is found, by `python -m core audit verify`
too, on SQLite and PostgreSQL; searching and paging for the audit page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from core.__main__ import main as cli
from core.auth import audit
from core.auth.permissions import Actor
from core.db import session_scope
from core.models import AuditEntry
from tests.support.apptest import reset_caches

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ADMIN = Actor("root", "admin")
SUPPORT = Actor("sam", "support")


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    """The CLI opens the process-wide engine; close its connections after each test."""
    yield
    reset_caches()


def fill(engine: Engine, count: int = 6) -> None:
    with session_scope(engine) as session:
        for i in range(count):
            actor = ADMIN if i % 2 else SUPPORT
            audit.record(
                session,
                actor,
                "promotion.deactivate" if i % 3 == 0 else "login.succeeded",
                f"target-{i}",
                {"n": i, "note": "ü ok"},
                idempotency_key=f"key-{i}",
                at=T0 + timedelta(hours=i),
            )


def run_verify(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    code = cli(["audit", "verify"])
    return code, capsys.readouterr().out


def _edit_details(s: Session) -> None:
    s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(details={"n": 99}))


def _edit_actor(s: Session) -> None:
    s.execute(update(AuditEntry).where(AuditEntry.id == 4).values(actor="someone-else"))


def _edit_time(s: Session) -> None:
    s.execute(update(AuditEntry).where(AuditEntry.id == 2).values(at=T0 - timedelta(days=1)))


def _delete_middle(s: Session) -> None:
    s.execute(delete(AuditEntry).where(AuditEntry.id == 3))


def _rehash_one(s: Session) -> None:
    # Editing a row AND recomputing its own hash still breaks the next row's link.
    row = s.execute(select(AuditEntry).where(AuditEntry.id == 2)).scalar_one()
    row.target = "forged"
    row.hash = audit._digest(row.prev_hash, row.at, audit._fields(row))


def _forged_append(s: Session) -> None:
    s.add(
        AuditEntry(
            at=T0 + timedelta(days=1),
            actor="intruder",
            role="admin",
            action="login.succeeded",
            target="x",
            details={},
            prev_hash=audit.GENESIS,
            hash="0" * 64,
        )
    )


@pytest.mark.parametrize(
    ("tamper", "broken_at"),
    [
        (_edit_details, 3),
        (_edit_actor, 4),
        (_edit_time, 2),
        (_delete_middle, 4),
        (_rehash_one, 3),
        (_forged_append, 7),
    ],
    ids=["details", "actor", "time", "delete", "rehash", "append"],
)
def test_verify_names_the_first_broken_entry(
    engine: Engine,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Session], None],
    broken_at: int,
) -> None:
    fill(engine)
    assert run_verify(db_url, monkeypatch, capsys) == (
        0,
        "audit log intact: 6 entries verified\n",
    )
    with session_scope(engine) as session:
        tamper(session)
    code, out = run_verify(db_url, monkeypatch, capsys)
    assert code == 1
    assert out.startswith(f"audit log broken at entry {broken_at}:")
    with session_scope(engine, write=False) as session:
        status = audit.verify(session)
    assert (status.ok, status.broken_at) == (False, broken_at)


def test_an_empty_log_verifies(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_verify(db_url, monkeypatch, capsys) == (0, "audit log intact: 0 entries verified\n")


def test_entries_chain_to_each_other(engine: Engine) -> None:
    fill(engine, 3)
    with session_scope(engine, write=False) as session:
        rows = session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars().all()
        assert rows[0].prev_hash == audit.GENESIS
        assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
        assert len({r.hash for r in rows}) == 3


@pytest.mark.parametrize(
    ("filters", "expected_ids"),
    [
        (audit.AuditFilter(), [6, 5, 4, 3, 2, 1]),
        (audit.AuditFilter(actor="root"), [6, 4, 2]),
        (audit.AuditFilter(action="promotion.deactivate"), [4, 1]),
        (audit.AuditFilter(actor="sam", action="login.succeeded"), [5, 3]),
        (audit.AuditFilter(since=T0 + timedelta(hours=2)), [6, 5, 4, 3]),
        (audit.AuditFilter(until=T0 + timedelta(hours=2)), [2, 1]),
        (audit.AuditFilter(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)), [3, 2]),
        (audit.AuditFilter(actor="nobody"), []),
    ],
)
def test_search_filters_newest_first(
    engine: Engine, filters: audit.AuditFilter, expected_ids: list[int]
) -> None:
    fill(engine)
    with session_scope(engine, write=False) as session:
        page = audit.search(session, filters, limit=50)
        assert [row.id for row in page.rows] == expected_ids
    assert page.total == len(expected_ids)


def test_search_pages(engine: Engine) -> None:
    fill(engine, 7)
    with session_scope(engine, write=False) as session:
        pages = [
            [row.id for row in audit.search(session, audit.AuditFilter(), limit=3, offset=o).rows]
            for o in (0, 3, 6)
        ]
        assert audit.distinct_values(session, "actor") == ["root", "sam"]
        assert audit.distinct_values(session, "action") == [
            "login.succeeded",
            "promotion.deactivate",
        ]
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


def test_audit_list_command(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(engine)
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert cli(["audit", "list", "--limit", "2", "--actor", "root"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "root (admin) login.succeeded target-5" in lines[0]
    assert lines[-1] == "2 of 3 entries"
