"""The browser journey of incident reviews: `streamlit run` on flags raised through the webhook
path, Debian's chromium through Playwright, as finance: open Risk, read the evidence, confirm one
incident with a note, then dismiss the next one shown, each review landing on the incident shown.
Reuses the browser journey's helpers."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from core.db import make_engine, session_scope
from core.models import AuditEntry, RiskFlag, RiskIncident
from tests.conftest import SECRET
from tests.support.apptest import write_users
from tests.support.dashboard_server import streamlit_dashboard
from tests.ui.test_browser import (
    STEP_TIMEOUT_MS,
    browser,
    log_in,
    open_page,
    shot,
)
from tests.ui.test_risk_page import raise_two_attacks

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module-scoped chromium fixture


@pytest.fixture(scope="module")
def risk_dashboard(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("risk-browser")
    database = workdir / "payments.db"
    shutil.copyfile(sqlite_template, database)
    db_url = f"sqlite:///{database}"
    raise_two_attacks(db_url)
    env = {
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # this tree's core
        "DATABASE_URL": db_url,
        "AUTH_CONFIG": str(write_users(workdir / "users.yaml")),
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    with streamlit_dashboard(workdir, env) as (url, _log):
        yield url, db_url


def test_finance_reviews_two_incidents_in_a_row(
    risk_dashboard: tuple[str, str], browser: Browser
) -> None:
    """Issue 13 finding 2, in a browser: each review lands on the incident shown."""
    url, db_url = risk_dashboard
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    shown: list[str] = []
    try:
        log_in(page, url, "finance")
        open_page(page, "Risk")
        main = page.get_by_test_id("stMain")
        expect(main.get_by_text("Timeline of the entities' attempts")).to_be_visible()
        expect(main.get_by_test_id("stPlotlyChart").first).to_be_visible()
        expect(main.get_by_text("Attempts behind the incident")).to_be_visible()
        for decision, message in (
            ("Confirm attack", "Bank confirmed a card-testing run."),
            ("Dismiss", "Our own QA run, ticket 77."),
        ):
            heading = main.get_by_text(re.compile(r"^Review incident #\d+$"))
            expect(heading).to_be_visible()
            shown.append(heading.inner_text().rsplit("#", 1)[1])
            shot(page, f"risk-{len(shown)}-incident")
            main.get_by_label("Note (what you checked)").fill(message)
            main.get_by_role("button", name=decision).click()
            expect(
                main.get_by_text(re.compile(rf"^Incident #{shown[-1]} (confirmed|dismissed)"))
            ).to_be_visible()
            # The page has moved on once the reviewed incident's form is gone (until then the
            # browser may still show the previous run's elements, greyed out).
            expect(main.get_by_text(f"Review incident #{shown[-1]}", exact=True)).to_have_count(0)
        expect(main.get_by_text("No open incident.")).to_be_visible()
        shot(page, "risk-3-done")
    finally:
        context.close()
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        statuses = dict(session.execute(select(RiskIncident.id, RiskIncident.status)).all())
        flags = sorted(session.execute(select(RiskFlag.status)).scalars())
        targets = list(
            session.execute(
                select(AuditEntry.target)
                .where(AuditEntry.action.like("risk.incident_%"))
                .order_by(AuditEntry.id)
            ).scalars()
        )
    engine.dispose()
    assert targets == [f"risk_incident:{n}" for n in shown]
    assert statuses == {int(shown[0]): "confirmed", int(shown[1]): "dismissed"}
    assert flags == ["confirmed"] * 4 + ["dismissed"] * 4
