"""The Rules page (issue 14) through the real entrypoint: admins only; a backtest of an edit
shows both sides and writes nothing; saving makes a new audited version live."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core.db import make_engine, session_scope
from core.models import AuditEntry, RiskFlag, RiskRuleSet
from tests.support.apptest import app_as, refused, reset_caches
from tests.ui.test_risk_page import raise_flags


@pytest.fixture(autouse=True)
def closed_engines() -> Any:
    yield
    reset_caches()


def rows(db_url: str) -> tuple[list[int], list[str], int]:
    engine = make_engine(db_url)
    with session_scope(engine, write=False) as session:
        versions = list(session.execute(select(RiskRuleSet.version)).scalars())
        actions = list(session.execute(select(AuditEntry.action)).scalars())
        flags = len(session.execute(select(RiskFlag.id)).all())
    engine.dispose()
    return versions, actions, flags


@pytest.mark.parametrize("role", ["support", "finance"])
def test_only_admins_reach_the_rules(sqlite_url: str, role: str) -> None:
    at = app_as(role, sqlite_url, page="pages/rules.py")
    assert refused(at)


def test_admin_backtests_then_saves_an_allow_list_entry(sqlite_url: str) -> None:
    raise_flags(sqlite_url)
    at = app_as("admin", sqlite_url, page="pages/rules.py")
    assert not at.exception
    before = rows(sqlite_url)
    assert before[2] == 4
    assert len(at.dataframe) >= 1 or at.get("arrow_data_editor")
    at.text_area[0].input("ip: 192.0.2.77").run()
    at.button(key="rules_backtest").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Live rules: flags"] == "4"
    assert metrics["Edited rules: flags"] == "2"  # the office IP's two flags go
    assert metrics["Only with the live rules"] == "2"
    assert rows(sqlite_url) == before  # the backtest wrote nothing
    at.text_input(key="rules_note").input("Office IP, our QA testers")
    next(b for b in at.button if b.label == "Save as version 1").click().run()
    assert not at.exception
    assert any("Rules version 1 saved" in str(s.value) for s in at.success)
    versions, actions, flags = rows(sqlite_url)
    assert versions == [1] and "risk.rules_saved" in actions and flags == 2
