"""The audit chain's head anchored outside the database (issue 12, finding 8), and the log
holding no customer email or IP address (pseudonyms instead)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select

from core.__main__ import main as cli
from core.auth import anchor, audit
from core.auth.permissions import Actor
from core.db import make_engine, session_scope
from core.models import AuditEntry
from tests.support.apptest import reset_caches

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ADMIN = Actor("root", "admin")


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    yield
    reset_caches()


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "anchor" / "checkpoints.jsonl"
    monkeypatch.setenv("AUDIT_CHECKPOINT_PATH", str(path))
    monkeypatch.setenv("AUDIT_CHECKPOINT_KEY", "a-test-checkpoint-key-of-some-length-0123")
    reset_caches()
    return path


def fill(engine: Engine, start: int, count: int) -> None:
    with session_scope(engine) as session:
        for i in range(start, start + count):
            audit.record(
                session,
                ADMIN,
                "promotion.deactivate",
                f"promo_{i}",
                {"n": i},
                at=T0 + timedelta(minutes=i),
            )


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str]:
    code = cli(["audit", *words])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_deleting_the_newest_rows_after_a_checkpoint_is_reported(
    db_url: str,
    configured: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 8: the hash chain alone cannot show that its newest rows were deleted."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    engine = make_engine(db_url)
    fill(engine, 0, 6)
    assert run(capsys, "checkpoint")[0] == 0
    fill(engine, 6, 2)
    assert run(capsys, "checkpoint")[0] == 0
    code, text = run(capsys, "verify")
    assert code == 0 and "intact: 8 entries" in text and "2 checkpoint(s)" in text

    with session_scope(engine) as session:  # delete the 3 newest rows
        newest = session.execute(select(AuditEntry.id).order_by(AuditEntry.id.desc())).scalars()
        doomed = list(newest)[:3]
        session.execute(delete(AuditEntry).where(AuditEntry.id.in_(doomed)))
        assert audit.verify(session).ok  # what the chain alone says: nothing is wrong
    code, text = run(capsys, "verify")
    assert code == 1
    assert "newest entries were deleted" in text and "entry 8" in text and "entry 5" in text
    engine.dispose()


def test_deleted_then_replaced_tail_rows_are_reported(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 8, variant: delete the newest rows, then let new entries take their ids."""
    monkeypatch.setenv("AUDIT_CHECKPOINT_PATH", str(tmp_path / "cp.jsonl"))
    engine = make_engine(sqlite_url)
    fill(engine, 0, 4)
    with session_scope(engine, write=False) as session:
        point = anchor.take(session)
    assert point is not None
    anchor.write(point)
    with session_scope(engine) as session:
        session.execute(delete(AuditEntry).where(AuditEntry.id >= 3))
    fill(engine, 10, 3)  # ids 3..5 again, a valid chain
    with session_scope(engine, write=False) as session:
        status = anchor.verify(session)
    assert status.chain.ok and not status.ok
    assert any("entry 4 differs" in problem for problem in status.problems)
    engine.dispose()


def test_checkpoints_are_signed_owner_only_and_forgeries_are_reported(
    sqlite_url: str,
    configured: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    fill(engine, 0, 3)
    assert run(capsys, "checkpoint")[0] == 0
    assert stat.S_IMODE(os.stat(configured).st_mode) == 0o600
    line = json.loads(configured.read_text().splitlines()[0])
    assert line["id"] == 3 and len(line["sig"]) == 64
    # Someone who can write the file but has no key cannot move the anchor back.
    forged = {**line, "id": 2, "entries": 2}
    with configured.open("a") as handle:
        handle.write(json.dumps(forged) + "\n")
    code, text = run(capsys, "verify")
    assert code == 1 and "line 2 has a bad signature" in text
    engine.dispose()


def test_without_a_checkpoint_verify_says_tail_deletion_is_undetectable(
    sqlite_url: str,
    configured: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    fill(make_engine(sqlite_url), 0, 2)
    code, text = run(capsys, "verify")
    assert code == 0 and "no checkpoint yet" in text
    assert run(capsys, "checkpoint")[0] == 0


def test_the_log_keeps_pseudonyms_not_emails_or_ip_addresses(sqlite_engine: Engine) -> None:
    """Issue 12 [B] erasure: audit rows are never rewritten, so they hold no raw email or IP."""
    with session_scope(sqlite_engine) as session:
        entry = audit.record(
            session,
            ADMIN,
            "order.note",
            "Jane.Doe@Shop.example",
            {
                "note": "called jane.doe@shop.example from 203.0.113.7 / 2001:db8::1",
                "masked": "j***@shop.example",
                "when": "2026-03-01T09:00:00+00:00",
                "nested": [{"ip": "198.51.100.4"}],
            },
        )
        assert audit.verify(session).ok
    stored = json.dumps(entry.details) + str(entry.target)
    for raw in ("jane.doe@shop.example", "Jane.Doe", "203.0.113.7", "2001:db8::1", "198.51.100.4"):
        assert raw not in stored
    assert entry.target == audit.pseudonym("email", "jane.doe@shop.example")
    assert entry.details["masked"] == "j***@shop.example"
    assert entry.details["when"] == "2026-03-01T09:00:00+00:00"
    assert audit.pseudonym("ip", "203.0.113.7") in entry.details["note"]
