"""The browser journey of a flag review: `streamlit run` on flags raised through the webhook path,
Debian's chromium through Playwright, as finance: open Risk, read the evidence, confirm with a
note, and see the flag leave the open list. Reuses the browser journey's helpers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from core.db import make_engine, session_scope
from core.models import AuditEntry, RiskFlag
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
from tests.ui.test_risk_page import raise_flags

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
    raise_flags(db_url)
    env = {
        "DATABASE_URL": db_url,
        "AUTH_CONFIG": str(write_users(workdir / "users.yaml")),
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    with streamlit_dashboard(workdir, env) as (url, _log):
        yield url, db_url


def test_finance_reviews_a_flag(risk_dashboard: tuple[str, str], browser: Browser) -> None:
    url, db_url = risk_dashboard
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, url, "finance")
        open_page(page, "Risk")
        main = page.get_by_test_id("stMain")
        expect(main.get_by_text("Timeline of the entity's attempts")).to_be_visible()
        expect(main.get_by_test_id("stPlotlyChart")).to_be_visible()
        expect(main.get_by_text("Attempts behind the flag")).to_be_visible()
        shot(page, "risk-1-flag")
        main.get_by_label("Note (what you checked)").fill("Bank confirmed a card-testing run.")
        main.get_by_role("button", name="Confirm attack").click()
        expect(main.get_by_text("The review is in the audit log.")).to_be_visible()
        shot(page, "risk-2-confirmed")
    finally:
        context.close()
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        statuses = sorted(session.execute(select(RiskFlag.status)).scalars())
        actions = list(session.execute(select(AuditEntry.action)).scalars())
    engine.dispose()
    assert statuses == ["confirmed", "open", "open", "open"]
    assert "risk.flag_confirmed" in actions
