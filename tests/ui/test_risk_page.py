"""The Risk page per role, through the real entrypoint and login (AppTest): flags raised on the
webhook path from signed events, their evidence, and an audited confirm or dismiss."""

from __future__ import annotations

import re
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


def raise_flags(
    db_url: str, email: str = EMAIL, ip: str = "192.0.2.77", start: int = START, tag: str = ""
) -> None:
    """Four declined charges for one email, three cards: a burst and card testing."""
    engine = make_engine(db_url)
    ctx = webhook_context(load_settings())
    for i in range(4):
        charge = so.charge(
            succeeded=False,
            created=start + i * 120,
            fingerprint=f"fpPAGE{tag}{i % 3}",
            last4=f"000{i}",
            email=email,
            client_ip=ip,
        )
        body, header = so.signed(so.event("charge.failed", charge, created=start + i * 120), SECRET)
        assert receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx).status == 200
    engine.dispose()


def raise_two_attacks(db_url: str) -> None:
    raise_flags(db_url)
    raise_flags(db_url, "eve.other@example.com", "198.51.100.5", START + 1800, "B")


def flags_by_status(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        rows = session.execute(select(RiskFlag)).scalars().all()
        result = {f"{r.entity_kind}/{r.pattern}": r.status for r in rows}
    engine.dispose()
    return result


def choose(at: AppTest, text: str) -> AppTest:
    box = at.selectbox[0]
    (label,) = [option for option in box.options if text in option]
    return box.select(label).run()


def texts(at: AppTest) -> str:
    return " ".join(
        str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.error, *at.text]
    )


def note(at: AppTest, value: str) -> None:
    next(t for t in at.text_area if t.label == "Note (what you checked)").input(value)


def shown_id(at: AppTest) -> int:
    """The record the page shows: the number in its selector's current choice."""
    match = re.search(r"#(\d+)", str(at.selectbox[0].value))
    assert match, at.selectbox[0].value
    return int(match.group(1))


def reviewed(db_url: str) -> list[int]:
    """The records reviews were written to, in order (from the audit log)."""
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        targets = session.execute(
            select(AuditEntry.target)
            .where(AuditEntry.action.like("risk.%"))
            .order_by(AuditEntry.id)
        ).scalars()
        result = [int(str(t).rsplit(":", 1)[1]) for t in targets]
    engine.dispose()
    return result


@pytest.mark.parametrize("role", ["finance", "admin"])
def test_reviewers_see_incidents_with_their_evidence(db_url: str, role: str) -> None:
    raise_flags(db_url)
    at = app_as(role, db_url, page="pages/risk.py")
    assert not at.exception
    incidents = at.dataframe[0].value
    assert len(incidents) == 1  # email and IP, burst and card testing: one attack, one incident
    flags = at.dataframe[1].value
    assert len(flags) == 4
    attempts = at.dataframe[2].value
    assert len(attempts) == 4
    assert sorted(attempts["card"].str[-4:]) == ["0000", "0001", "0002", "0003"]
    assert at.get("plotly_chart")  # the entities' timeline
    shown = " ".join(at.selectbox[0].options) + flags.to_string()
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
        ("Confirm attack", "confirmed", "risk.incident_confirmed"),
        ("Dismiss", "dismissed", "risk.incident_dismissed"),
    ],
)
def test_review_with_a_note_closes_every_flag_and_is_audited(
    db_url: str, button: str, status: str, action: str
) -> None:
    raise_flags(db_url)
    at = app_as("finance", db_url, page="pages/risk.py")
    note(at, "Called the issuer; see ticket 4411.")
    next(b for b in at.button if b.label == button).click().run()
    assert not at.exception
    assert "The review is in the audit log." in texts(at)
    assert set(flags_by_status(db_url).values()) == {status}
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        entry = session.execute(select(AuditEntry).where(AuditEntry.action == action)).scalar_one()
        assert (entry.actor, entry.role, entry.details["note"]) == (
            "finance",
            "finance",
            "Called the issuer; see ticket 4411.",
        )
        assert len(entry.details["flags"]) == 4
        assert audit.verify(session).ok
    engine.dispose()


def test_a_review_without_a_note_is_refused(sqlite_url: str) -> None:
    raise_flags(sqlite_url)
    at = app_as("admin", sqlite_url, page="pages/risk.py")
    next(b for b in at.button if b.label == "Dismiss").click().run()
    assert "A note is required" in texts(at)
    assert set(flags_by_status(sqlite_url).values()) == {"open"}


def test_two_reviews_in_a_row_each_land_on_the_one_shown(sqlite_url: str) -> None:
    """Issue 13, finding 2: after confirming one record the page still showed it with its
    form, and the next note + "Dismiss" acted on whatever the selector defaulted to after the
    rerun (#1), not on the record shown. Each review must land on the record shown when its
    button was pressed."""
    raise_two_attacks(sqlite_url)
    at = app_as("finance", sqlite_url, page="pages/risk.py")
    first = shown_id(at)
    note(at, "Bank confirmed a card-testing run.")
    next(b for b in at.button if b.label == "Confirm attack").click().run()
    assert not at.exception
    second = shown_id(at)
    note(at, "Our own QA team, see ticket 77.")
    next(b for b in at.button if b.label == "Dismiss").click().run()
    assert not at.exception
    assert reviewed(sqlite_url) == [first, second]
    assert first != second  # the confirmed one left the open list


def test_no_incidents(sqlite_url: str) -> None:
    at = app_as("finance", sqlite_url, page="pages/risk.py")
    assert not at.exception
    assert [s.value for s in at.success] == ["No open incident."]


def test_an_alert_link_opens_its_incident(sqlite_url: str) -> None:
    """Issue 14: alert messages link to /risk?incident=N; the page opens on incident N."""
    raise_two_attacks(sqlite_url)
    at = app_as("finance", sqlite_url, page="pages/risk.py")
    other = [
        int(o.split(" ")[0][1:])
        for o in at.selectbox[0].options
        if str(shown_id(at)) not in o.split(" ")[0]
    ]
    at.query_params["incident"] = str(other[0])
    at.run()
    assert shown_id(at) == other[0]
