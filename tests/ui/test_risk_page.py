"""The Risk page per role, through the real entrypoint and login (AppTest): flags raised on the
webhook path from signed events, their evidence, and an audited confirm or dismiss."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from core.auth import audit
from core.db import make_engine, session_scope
from core.models import AuditEntry, RiskFlag
from core.runtime import webhook_context
from core.settings import load_settings
from core.webhook.receive import receive
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.apptest import app_as, refused, reset_caches

START = int(time.time()) - 2 * 3600
EMAIL = "mallory.tester@example.com"


@pytest.fixture(autouse=True)
def closed_engines() -> Any:
    yield
    reset_caches()


def raise_flags(db_url: str) -> None:
    """Four declined charges for one email, three cards: a burst and card testing."""
    engine = make_engine(db_url)
    ctx = webhook_context(load_settings())
    for i in range(4):
        charge = so.charge(
            succeeded=False,
            created=START + i * 120,
            fingerprint=f"fpPAGE{i % 3}",
            last4=f"000{i}",
            email=EMAIL,
            client_ip="192.0.2.77",
        )
        body, header = so.signed(so.event("charge.failed", charge, created=START + i * 120), SECRET)
        assert receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx).status == 200
    engine.dispose()


def flags_by_status(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        rows = session.execute(select(RiskFlag)).scalars().all()
        result = {f"{r.entity_kind}/{r.pattern}": r.status for r in rows}
    engine.dispose()
    return result


def choose(at: AppTest, text: str) -> AppTest:
    box = at.selectbox(key="risk_flag")
    (label,) = [option for option in box.options if text in option]
    return box.select(label).run()


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.error])


@pytest.mark.parametrize("role", ["finance", "admin"])
def test_reviewers_see_flags_with_their_evidence(db_url: str, role: str) -> None:
    raise_flags(db_url)
    at = app_as(role, db_url, page="pages/risk.py")
    assert not at.exception
    flags = at.dataframe[0].value
    assert len(flags) == 4  # email and IP: a burst and card testing each; no card failed 4 times
    at = choose(at, "Card testing · Email")
    attempts = at.dataframe[1].value
    assert len(attempts) == 4
    assert sorted(attempts["card"].str[-4:]) == ["0000", "0001", "0002", "0003"]
    assert at.get("plotly_chart")  # the entity's timeline
    shown = " ".join(at.selectbox(key="risk_flag").options)
    if role == "finance":  # finance sees emails masked, as everywhere
        assert EMAIL not in shown and "m***@example.com" in shown
        assert EMAIL not in attempts.to_string()
    else:
        assert EMAIL in shown


def test_support_is_refused(sqlite_url: str) -> None:
    raise_flags(sqlite_url)
    at = app_as("support", sqlite_url, page="pages/risk.py")
    assert refused(at)
    assert not at.dataframe


@pytest.mark.parametrize(
    ("button", "status", "action"),
    [
        ("Confirm attack", "confirmed", "risk.flag_confirmed"),
        ("Dismiss", "dismissed", "risk.flag_dismissed"),
    ],
)
def test_review_with_a_note_is_audited(db_url: str, button: str, status: str, action: str) -> None:
    raise_flags(db_url)
    at = app_as("finance", db_url, page="pages/risk.py")
    at = choose(at, "Burst of failures · IP address 192.0.2.77")
    at.text_area(key="risk_note").input("Called the issuer; see ticket 4411.")
    next(b for b in at.button if b.label == button).click().run()
    assert not at.exception
    assert "The review is in the audit log." in texts(at)
    assert flags_by_status(db_url)["ip/burst"] == status
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        entry = session.execute(select(AuditEntry).where(AuditEntry.action == action)).scalar_one()
        assert (entry.actor, entry.role, entry.details["note"]) == (
            "finance",
            "finance",
            "Called the issuer; see ticket 4411.",
        )
        assert audit.verify(session).ok
    engine.dispose()


def test_a_review_without_a_note_is_refused(sqlite_url: str) -> None:
    raise_flags(sqlite_url)
    at = app_as("admin", sqlite_url, page="pages/risk.py")
    at = choose(at, "Burst of failures · IP address")
    next(b for b in at.button if b.label == "Dismiss").click().run()
    assert "A note is required" in texts(at)
    assert flags_by_status(sqlite_url)["ip/burst"] == "open"


def test_no_flags(sqlite_url: str) -> None:
    at = app_as("finance", sqlite_url, page="pages/risk.py")
    assert not at.exception
    assert [s.value for s in at.success] == ["No open flag."]
