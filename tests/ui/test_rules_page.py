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


def edit(at: Any, changes: dict[int, dict[str, Any]]) -> Any:
    """Type into cells of the rules table (rows in the table's order), as the grid would."""
    at.session_state["rules_table_0"] = {
        "edited_rows": changes,
        "added_rows": [],
        "deleted_rows": [],
    }
    return at.run()


def test_the_table_shows_each_rules_filter_and_a_filter_changes_the_backtest(
    sqlite_url: str,
) -> None:
    raise_flags(sqlite_url)  # declined USD charges: flags for the email and the IP address
    at = app_as("admin", sqlite_url, page="pages/rules.py")
    (editor,) = at.data_editor
    table = editor.value
    assert list(table.columns[-3:]) == ["only currency", "only from amount", "only decline codes"]
    ip_rows = [i for i, kind in enumerate(table["entity"]) if kind == "ip"]
    # The IP address's rules count only EUR failures: its two flags would not be raised.
    at = edit(at, {i: {"only currency": "EUR"} for i in ip_rows})
    at.button(key="rules_backtest").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Live rules: flags"], metrics["Edited rules: flags"]) == ("4", "2")
    # Counting only USD failures from 25.00 keeps them all (the charges are USD 25.00); from
    # 25.01, none.
    at = edit(at, {i: {"only currency": "USD", "only from amount": "25"} for i in ip_rows})
    at.button(key="rules_backtest").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Edited rules: flags"], metrics["Only with the live rules"]) == ("4", "0")
    at = edit(at, {i: {"only currency": "USD", "only from amount": "25.01"} for i in ip_rows})
    at.button(key="rules_backtest").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Edited rules: flags"], metrics["Only with the live rules"]) == ("2", "2")


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"only from amount": "50"}, "needs a currency"),
        ({"only currency": "USD", "only from amount": "12.345"}, "at most 2 decimal places"),
        ({"only decline codes": "Fraud!"}, "lower-case letters"),
        ({"only currency": "XYZ"}, "not a currency Stripe charges in"),
        ({"threshold (failures)": None}, "a threshold and a window are required"),
    ],
)
def test_a_bad_filter_is_refused_with_what_is_wrong(
    sqlite_url: str, cells: dict[str, str | None], message: str
) -> None:
    at = app_as("admin", sqlite_url, page="pages/rules.py")
    at = edit(at, {0: cells})
    at.button(key="rules_backtest").click().run()
    assert not at.exception
    (error,) = [str(e.value) for e in at.error]
    assert message in error and error.startswith("card / burst:")
    at.text_input(key="rules_note").input("try it")
    next(b for b in at.button if b.label == "Save as version 1").click().run()
    assert not at.exception
    assert any(message in str(e.value) for e in at.error)
    assert rows(sqlite_url)[0] == []  # nothing saved
