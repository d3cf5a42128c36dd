"""Login, navigation by role, refusals and the end of sessions, through the real entrypoint.

A "new browser session" is a new AppTest; a "restart" also forgets engines, settings and
caches (`reset_caches`), as a new dashboard process would. Lockout and sessions live in the
database, so neither resets them.

AppTest sends no cookies, so the login cookie is tested here through `cookie_actor`, the check
the dashboard applies to what streamlit-authenticator read from it, and end to end in
tests/ui/test_browser.py."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from core.__main__ import main as cli
from core.auth import permissions
from core.auth.sessions import BAD_CREDENTIALS, CLIENT_FREE_FAILURES, client_delay, wait_message
from core.db import make_engine, session_scope
from core.models import AuditEntry
from core.settings import get_settings
from dashboard import auth
from dashboard.app import PAGES, PRODUCT
from dashboard.auth import (
    LOGOUT_KEY,
    REFUSAL_TITLES,
    TOKEN_KEY,
    UNAVAILABLE,
    cookie_actor,
    cookie_value,
)
from tests.support.apptest import (
    PASSWORDS,
    app_as,
    configure,
    logged_in,
    login,
    nav_titles,
    new_app,
    page_path,
    refused,
    reset_caches,
    write_users,
)

EXPECTED_PAGES = {
    "support": ["Orders", "Promotion codes", "Manual fulfillment"],
    "finance": ["Overview", "Orders", "Payments", "Webhooks", "Risk", "Promotion codes"],
    "admin": [
        "Overview",
        "Orders",
        "Payments",
        "Webhooks",
        "Risk",
        "Risk rules",
        "Promotion codes",
        "Manual fulfillment",
        "Reconcile & replay",
        "Audit log",
        "Users",
    ],
}
LANDING = {"support": "Orders", "finance": "Overview", "admin": "Overview"}
FORBIDDEN = [
    (role, f"pages/{spec.file}")
    for role, titles in EXPECTED_PAGES.items()
    for spec in PAGES
    if spec.title not in titles
]


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    yield
    reset_caches()


def errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.error]


def shows_login_form(at: AppTest) -> bool:
    return any(button.label == "Log in" for button in at.button) and not logged_in(at)


def fresh_login(username: str, password: str) -> AppTest:
    """A new browser session submitting the login form."""
    at = new_app().run()
    return login(at, username, password)


# --- Login ---------------------------------------------------------------------------------------


def test_logged_out_visitors_see_only_the_login_form(sqlite_url: str) -> None:
    at = app_as(None, sqlite_url)
    assert shows_login_form(at)
    assert nav_titles(at) == []
    assert [t.value for t in at.title] == [PRODUCT]  # the login page names only the product
    assert not at.dataframe and not at.metric


@pytest.mark.parametrize("page", [f"pages/{spec.file}" for spec in PAGES])
def test_a_page_url_without_login_shows_the_login_form_and_no_data(
    sqlite_url: str, page: str
) -> None:
    configure(sqlite_url)
    at = new_app().run()
    at.switch_page(page_path(page)).run()
    assert not at.exception
    assert shows_login_form(at)
    assert [t.value for t in at.title] == [PRODUCT]  # the login page names only the product
    assert not at.dataframe and not at.metric


@pytest.mark.parametrize("role", ["support", "finance", "admin"])
def test_each_role_logs_in_and_sees_exactly_its_pages(sqlite_url: str, role: str) -> None:
    at = app_as(role, sqlite_url)
    assert not at.exception
    assert nav_titles(at) == EXPECTED_PAGES[role]
    assert [t.value for t in at.title][:1] == [LANDING[role]]
    sidebar = " ".join(str(m.value) for m in at.sidebar.markdown)
    assert f"**{role}**" in sidebar and "Role:" in sidebar


@pytest.mark.parametrize(
    ("username", "password"),
    [("finance", "wrong-password-here"), ("nobody", "finance-demo"), ("FINANCE", "Finance-demo")],
)
def test_a_wrong_login_is_refused_with_one_message(
    sqlite_url: str, username: str, password: str
) -> None:
    configure(sqlite_url)
    at = fresh_login(username, password)
    assert not at.exception
    assert errors(at) == [BAD_CREDENTIALS]
    assert shows_login_form(at)
    assert nav_titles(at) == []


def test_usernames_are_case_insensitive(sqlite_url: str) -> None:
    configure(sqlite_url)
    at = fresh_login(" Finance ", PASSWORDS["finance"])
    assert logged_in(at) and nav_titles(at) == EXPECTED_PAGES["finance"]


@pytest.mark.parametrize(("role", "page"), FORBIDDEN)
def test_a_forbidden_page_reached_directly_shows_only_a_refusal(
    sqlite_url: str, role: str, page: str
) -> None:
    at = app_as(role, sqlite_url, page=page)
    assert not at.exception
    assert refused(at)
    main = at.main
    assert [t.value for t in main.title] == [REFUSAL_TITLES[auth.FORBIDDEN]]  # no page's own title
    assert not main.dataframe and not main.metric and not main.table
    assert not main.get("plotly_chart") and not main.selectbox and not main.text_input
    assert nav_titles(at) == EXPECTED_PAGES[role]  # still not listed


def test_stand_in_label_only_without_a_stripe_key(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def label(at: AppTest) -> bool:
        return any("stand-in" in str(c.value) for c in at.sidebar.caption)

    assert label(app_as("support", sqlite_url))
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_not_used_by_this_page_0123456789")
    assert not label(app_as("support", sqlite_url))


# --- Lockout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["finance", "ghost"])
def test_lockout_holds_across_browser_sessions_and_a_restart(db_url: str, username: str) -> None:
    configure(db_url)
    at = new_app().run()
    for _ in range(CLIENT_FREE_FAILURES):
        login(at, username, "wrong-password-guess")
    assert errors(at) == [wait_message(client_delay(CLIENT_FREE_FAILURES))]

    reset_caches()  # restart: new engine, settings and caches; same database
    configure(db_url)
    again = fresh_login(username, PASSWORDS.get(username, "finance-demo"))
    assert [e.startswith("Too many failed logins") for e in errors(again)] == [True]
    assert not logged_in(again) and nav_titles(again) == []


# --- Ending sessions -----------------------------------------------------------------------------


def copied_session(at: AppTest) -> AppTest:
    """A new browser session holding the same session token as `at` (a copied credential)."""
    token = at.session_state[TOKEN_KEY]
    other = new_app()
    other.session_state[TOKEN_KEY] = token
    return other


def test_logout_ends_the_session_for_every_copy(db_url: str) -> None:
    at = app_as("admin", db_url)
    copy = copied_session(at)
    assert logged_in(copy.run())  # the copy works while the session lives

    at.sidebar.button(key=LOGOUT_KEY).click().run()
    assert shows_login_form(at) and nav_titles(at) == []

    reset_caches()
    configure(db_url)
    copy.run()
    assert shows_login_form(copy) and nav_titles(copy) == []
    copy.switch_page(page_path("pages/audit_log.py")).run()
    assert shows_login_form(copy) and not copy.dataframe


def test_an_admin_revocation_ends_a_live_session(db_url: str) -> None:
    at = app_as("finance", db_url)
    assert cli(["users", "revoke", "finance"]) == 0
    at.run()  # the finance user's next click
    assert shows_login_form(at)
    assert logged_in(app_as("support", db_url))  # others keep working


def test_a_password_reset_ends_live_sessions(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_as("support", sqlite_url)
    new_password = "a new long password 42"
    monkeypatch.setattr("getpass.getpass", lambda prompt="": new_password)
    assert cli(["users", "reset-password", "support"]) == 0
    at.run()
    assert shows_login_form(at)
    assert not logged_in(fresh_login("support", PASSWORDS["support"]))
    assert logged_in(fresh_login("support", new_password))


def test_a_forged_session_token_logs_nobody_in(sqlite_url: str) -> None:
    app_as("admin", sqlite_url)  # a live session exists, just not this one
    other = new_app()
    other.session_state[TOKEN_KEY] = secrets.token_urlsafe(32)
    other.run()
    assert shows_login_form(other) and nav_titles(other) == []


def test_sessions_expire_after_session_hours(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSION_HOURS", str(1.5 / 3600))  # 1.5 seconds
    at = app_as("admin", sqlite_url, page="pages/audit_log.py")
    assert [t.value for t in at.title] == ["Audit log"]
    time.sleep(1.6)
    at.run()
    assert shows_login_form(at) and not at.dataframe


def test_removing_a_user_ends_their_session(sqlite_url: str) -> None:
    at = app_as("support", sqlite_url)
    assert cli(["users", "remove", "support"]) == 0
    at.run()
    assert shows_login_form(at)


# --- Login cookie --------------------------------------------------------------------------------


def cookie_claims(at: AppTest) -> dict[str, Any]:
    """What streamlit-authenticator reads from the cookie `at`'s login wrote: the cookie's
    value, decoded as the library decodes it (HS256 with COOKIE_KEY)."""
    expires = datetime.now() + timedelta(hours=8)
    value = cookie_value(at.session_state["username"], at.session_state[TOKEN_KEY], expires)
    key = get_settings().cookie_key.get_secret_value()
    claims: dict[str, Any] = jwt.decode(value, key, algorithms=["HS256"])
    assert claims["username"] == at.session_state["username"]
    assert claims["exp_date"] > time.time()  # what the library checks before passing it on
    return claims


def end_session(at: AppTest, ending: str, monkeypatch: pytest.MonkeyPatch) -> None:
    username = str(at.session_state["username"])
    if ending == "logout":
        at.sidebar.button(key=LOGOUT_KEY).click().run()
    elif ending == "revocation":
        assert cli(["users", "revoke", username]) == 0
    elif ending == "password reset":
        monkeypatch.setattr("getpass.getpass", lambda prompt="": "a new long password 42")
        assert cli(["users", "reset-password", username]) == 0
    else:
        assert cli(["users", "remove", username]) == 0


@pytest.mark.parametrize("ending", ["logout", "revocation", "password reset", "removal"])
def test_a_cookie_logs_in_only_while_its_session_lives(
    db_url: str, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    at = app_as("finance", db_url)
    claims = cookie_claims(at)  # copied while the session lives
    assert cookie_actor(claims) == permissions.Actor("finance", "finance")
    end_session(at, ending, monkeypatch)
    assert cookie_actor(claims) is None
    at.run()
    assert shows_login_form(at) and nav_titles(at) == []
    # The library's own session state no longer says anyone is logged in.
    assert at.session_state["authentication_status"] is None
    assert at.session_state["username"] is None


def library_cookie(username: str) -> dict[str, Any]:
    """A cookie as streamlit-authenticator writes it on its own: no session."""
    return {"username": username, "exp_date": time.time() + 3600}


@pytest.mark.parametrize(
    "forge",
    [
        lambda claims: library_cookie("admin"),
        lambda claims: {**claims, "session": secrets.token_urlsafe(32)},
        lambda claims: {**claims, "username": "support"},  # a live session, another user
        lambda claims: {**claims, "session": ""},
        lambda claims: {**claims, "session": ["not", "a", "token"]},
        lambda claims: {"session": claims["session"]},
        lambda claims: False,  # what the library hands on after a logout in the same session
        lambda claims: None,
    ],
    ids=[
        "library-cookie",
        "unknown-session",
        "other-username",
        "empty-session",
        "session-not-text",
        "no-username",
        "false",
        "none",
    ],
)
def test_a_forged_cookie_logs_nobody_in(
    sqlite_url: str, forge: Callable[[dict[str, Any]], object]
) -> None:
    claims = cookie_claims(app_as("admin", sqlite_url))
    assert cookie_actor(claims) == permissions.Actor("admin", "admin")
    assert cookie_actor(forge(claims)) is None


# --- Audit log page ------------------------------------------------------------------------------


def test_audit_log_page_lists_logins_and_filters_them(sqlite_url: str) -> None:
    configure(sqlite_url)
    fresh_login("support", "wrong-password-guess")
    at = app_as("admin", sqlite_url, page="pages/audit_log.py")
    assert not at.exception
    assert any("Chain intact: 2 entries" in str(s.value) for s in at.success)
    table = at.dataframe[0].value
    assert list(table["action"]) == ["login.succeeded", "login.failed"]
    assert list(table["actor"]) == ["admin", "support"]

    at.selectbox(key="audit_action").select("login.failed").run()
    table = at.dataframe[0].value
    assert list(table["target"]) == ["support"]
    assert "1 matching entries" in " ".join(str(c.value) for c in at.caption)


def test_audit_log_page_pages_through_entries(sqlite_url: str) -> None:
    configure(sqlite_url)
    engine = make_engine(sqlite_url)
    from core.auth import audit

    with session_scope(engine) as session:
        for i in range(120):
            audit.record(session, permissions.SYSTEM, "test.event", f"t{i}")
    engine.dispose()
    at = app_as("admin", sqlite_url, page="pages/audit_log.py")
    assert len(at.dataframe[0].value) == 50
    assert "121 matching entries" in " ".join(str(c.value) for c in at.caption)


def test_audit_log_page_shows_where_the_chain_breaks(sqlite_url: str) -> None:
    configure(sqlite_url)
    for _ in range(3):
        fresh_login("support", "wrong-password-guess")
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 2).values(target="someone"))
    engine.dispose()
    at = app_as("admin", sqlite_url, page="pages/audit_log.py")
    assert any("Chain broken at entry 2" in e for e in errors(at))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("credentials: {usernames: {}}\n", "No users are configured yet"),
        ("credentials: [broken", "Login is unavailable"),
    ],
    ids=["no-users", "unreadable"],
)
def test_a_missing_or_broken_users_file_is_explained_without_details(
    sqlite_url: str, tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(body)
    configure(sqlite_url, path)
    at = fresh_login("admin", PASSWORDS["admin"])
    shown = [str(e.value) for e in (*at.error, *at.warning)]
    assert len(shown) == 1 and shown[0].startswith(message)
    assert str(tmp_path) not in shown[0]
    assert not logged_in(at)


def test_only_users_in_the_configured_file_can_log_in(sqlite_url: str, tmp_path: Path) -> None:
    path = write_users(tmp_path / "other.yaml", {"olga": ("admin", "olga's long password")})
    configure(sqlite_url, path)
    assert logged_in(fresh_login("olga", "olga's long password"))
    path.write_text(path.read_text().replace("olga", "oleg"))  # edited by hand
    assert errors(fresh_login("olga", "olga's long password")) == [BAD_CREDENTIALS]


def test_an_unreachable_database_refuses_login_plainly(tmp_path: Path) -> None:
    configure("postgresql+psycopg://nobody@127.0.0.1:1/payments")
    at = fresh_login("admin", PASSWORDS["admin"])
    assert not at.exception
    assert errors(at) == [UNAVAILABLE]
    assert not logged_in(at)
