"""The admin Users page (issue 12 [B], login abuse), through the real entrypoint and login form:
list, unlock, end sessions, change role with confirmation, add a user whose one-time password
must be changed at first login. Every change audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from core.auth import sessions
from core.auth.users import load_users
from core.db import get_engine, session_scope
from core.models import AuditEntry, utcnow
from tests.support.apptest import (
    PASSWORDS,
    app_as,
    logged_in,
    login,
    nav_titles,
    new_app,
    reset_caches,
)

PAGE = "pages/users.py"


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    yield
    reset_caches()


def button(at: AppTest, label: str) -> object:
    return next(b for b in at.button if b.label == label)


def actions() -> list[str]:
    with session_scope(get_engine(), write=False) as session:
        return list(session.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars())


def table(at: AppTest) -> dict[str, dict[str, object]]:
    frame = at.dataframe[0].value
    return {
        str(row["username"]): {str(k): v for k, v in row.items()}
        for row in frame.to_dict("records")
    }


def test_admin_adds_a_user_who_must_change_the_one_time_password(sqlite_url: str) -> None:
    at = app_as("admin", sqlite_url, page=PAGE)
    assert not at.exception and [t.value for t in at.title] == ["Users"]
    assert set(table(at)) == {"admin", "finance", "support"}
    at.text_input(key="users_new_name").input("Nora")
    at.selectbox(key="users_new_role").select("support")
    button(at, "Add user").click().run()  # type: ignore[attr-defined]
    assert not at.exception and not at.error
    password = at.code[0].value
    assert len(password) >= 12
    user = load_users(Path(str(load_path())))["nora"]
    assert user.role == "support" and user.must_change_password
    assert "user.added" in actions()

    first = new_app().run()
    login(first, "nora", password)
    assert [t.value for t in first.title] == ["Choose your password"]
    assert nav_titles(first) == [] and not logged_in(first)  # nothing else until changed
    fields = {f.label: f for f in first.text_input}
    fields["Current (one-time) password"].input(password)
    fields["New password (at least 12 characters)"].input("nora's own passphrase")
    fields["Repeat the new password"].input("nora's own passphrase")
    button(first, "Change password").click().run()  # type: ignore[attr-defined]
    first.run()
    assert logged_in(first) and "Orders" in nav_titles(first)
    assert not load_users(load_path())["nora"].must_change_password
    assert "user.password_changed" in actions()
    # The one-time password is spent.
    again = login(new_app().run(), "nora", password)
    assert not logged_in(again)


def load_path() -> Path:
    from core.settings import get_settings

    return get_settings().auth_config


def test_admin_unlocks_a_user_locked_by_a_distributed_guess(sqlite_url: str) -> None:
    at = app_as("admin", sqlite_url, page=PAGE)
    now = utcnow() - timedelta(minutes=1)
    with session_scope(get_engine()) as session:
        users = load_users(load_path())
        for n in range(sessions.USER_CEILING):
            sessions.login(
                session,
                users,
                "finance",
                "wrong guess",
                session_hours=8,
                now=now,
                client=f"10.9.{n}.1",
            )
    at.run()
    assert table(at)["finance"]["locked"] == "yes"
    assert not logged_in(login(new_app().run(), "finance", PASSWORDS["finance"]))
    at.selectbox(key="users_pick").select("finance")
    at.button(key="users_unlock").click().run()
    assert not at.exception
    assert table(at)["finance"]["locked"] == "no"
    assert any("Unlocked finance" in str(s.value) for s in at.success)
    assert "login.unlocked" in actions()
    assert logged_in(login(new_app().run(), "finance", PASSWORDS["finance"]))


def test_role_changes_and_revocations_need_the_username_typed(sqlite_url: str) -> None:
    finance = app_as("finance", sqlite_url)
    at = app_as("admin", sqlite_url, page=PAGE)
    assert table(at)["finance"]["live sessions"] == 1
    at.selectbox(key="users_pick").select("finance")
    at.selectbox(key="users_role_pick").select("support")
    at.text_input(key="users_rcc").input("support")  # the wrong name
    button(at, "Change role").click().run()  # type: ignore[attr-defined]
    assert [e.value for e in at.error] == ["Type the username (finance) to confirm."]
    assert load_users(load_path())["finance"].role == "finance"

    at.text_input(key="users_rcc").input("finance")
    button(at, "Change role").click().run()  # type: ignore[attr-defined]
    assert not at.error
    assert load_users(load_path())["finance"].role == "support"
    assert table(at)["finance"]["live sessions"] == 0
    assert not logged_in(finance.run())  # the old session ended with the role change
    assert "user.role_changed" in actions()

    at.selectbox(key="users_pick").select("admin")
    at.selectbox(key="users_role_pick").select("support")
    at.text_input(key="users_rcc").input("admin")
    button(at, "Change role").click().run()  # type: ignore[attr-defined]
    assert [e.value for e in at.error] == ["You cannot change your own role (ask another admin)."]

    support = app_as("support", sqlite_url)
    at.run()
    at.selectbox(key="users_pick").select("support")
    at.text_input(key="users_rc").input("support")
    button(at, "End sessions").click().run()  # type: ignore[attr-defined]
    assert not at.error and not logged_in(support.run())
    assert "sessions.revoke" in actions()


def test_the_users_page_is_refused_to_other_roles(sqlite_url: str) -> None:
    at = app_as("finance", sqlite_url, page=PAGE)
    assert [e.value for e in at.error] == ["Your role does not give access to this page."]
    assert not at.dataframe


def test_erasure_from_the_users_page_previews_then_needs_a_reason_and_a_tick(
    sqlite_url: str,
) -> None:
    from core.models import Order

    at = app_as("admin", sqlite_url, page=PAGE)
    with session_scope(get_engine()) as session:
        session.add(
            Order(
                checkout_session_id="cs_test_erase",
                customer_email="erin@shop.example",
                amount_total=1500,
                currency="eur",
                status="paid",
            )
        )
    at.text_input(key="erase_who").input("erin@shop.example")
    button(at, "Preview").click().run()  # type: ignore[attr-defined]
    report = " ".join(str(t.value) for t in at.text)
    assert "would change (dry run)" in report and "orders.customer_email: 1" in report
    button(at, "Erase").click().run()  # type: ignore[attr-defined]  # not ticked: preview only
    assert [e.value for e in at.error][:1] == [
        "Tick the confirmation to erase; showing the preview instead."
    ]
    at.checkbox(key="erase_confirm").check()
    button(at, "Erase").click().run()  # type: ignore[attr-defined]  # no reason given
    assert "Give the reason for the erasure (the request's reference)." in [
        e.value for e in at.error
    ]
    at.text_input(key="erase_reason").input("DSR-2026-017")
    button(at, "Erase").click().run()  # type: ignore[attr-defined]
    assert "row(s) changed" in " ".join(str(t.value) for t in at.text)
    with session_scope(get_engine(), write=False) as session:
        email = session.execute(select(Order.customer_email)).scalar_one()
    assert email is not None and email.endswith("@erased.invalid")
    assert actions()[-1] == "personal_data.erased"
