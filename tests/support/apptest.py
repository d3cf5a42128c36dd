"""Drive the dashboard through its real entrypoint and login form with Streamlit's AppTest.

    from tests.support.apptest import app_as, nav_titles, PASSWORDS

    def test_orders_page_for_support(db_url: str) -> None:
        at = app_as("support", db_url, page="pages/orders.py")
        assert not at.exception
        assert "Orders" in nav_titles(at)

    def test_audit_log_refused_to_finance(db_url: str) -> None:
        at = app_as("finance", db_url, page="pages/audit_log.py")
        assert refused(at)                  # st.error with the refusal, nothing else drawn

- `role` is one of "admin", "finance", "support" (the demo users, logged in with their demo
  passwords through the login form), or None to stay logged out (the login form is shown).
- `db_url` is a migrated database (the `db_url` / `sqlite_url` / `pg_url` fixtures); fill it
  with whatever the page should show before calling `app_as`.
- `page` is a page file relative to the repository root ("pages/orders.py"); without it the
  app shows the role's landing page (Orders for support, Overview for finance and admin).
- `users_file` replaces the demo users file (see `write_users`).
- The returned AppTest has run; interact with it as usual (`at.button(...).click().run()`).

`app_as` sets DATABASE_URL and AUTH_CONFIG in the environment (the autouse fixture in
tests/conftest.py restores it after the test), and clears settings, engines and every
st.cache_* so no test sees another's data. Demo users are hashed with a low bcrypt cost to keep
the suite fast; the cost does not change what is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from core.auth.permissions import Role
from core.auth.users import DEMO_USERS, User, hash_password, save_users, with_demo_users
from core.db import dispose_engines, get_engine
from core.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "dashboard" / "app.py"
PASSWORDS: dict[str, str] = {name: password for name, (_, password) in DEMO_USERS.items()}
TEST_BCRYPT_ROUNDS = 4


def reset_caches() -> None:
    """Forget settings, engines and Streamlit caches: what a fresh process would start with.

    The current DATABASE_URL's engine is disposed (connections closed), not just forgotten:
    a PostgreSQL connection left to the garbage collector raises a ResourceWarning, which
    fails whichever later test it lands in. Call this at the end of a test too (see
    `closed_engines` in tests/ui/test_app_auth.py)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        get_engine(url).dispose()
    get_settings.cache_clear()
    dispose_engines()
    st.cache_data.clear()
    st.cache_resource.clear()


def write_users(path: Path, extra: dict[str, tuple[Role, str]] | None = None) -> Path:
    """A users file with the demo users plus `extra` ({username: (role, password)})."""
    users = with_demo_users({}, rounds=TEST_BCRYPT_ROUNDS)
    for username, (role, password) in (extra or {}).items():
        users[username] = User(
            username, username, role, hash_password(password, rounds=TEST_BCRYPT_ROUNDS)
        )
    save_users(path, users)
    return path


def configure(db_url: str, users_file: Path | None = None) -> Path:
    """Point the app at `db_url` and a users file (the demo users unless given)."""
    users_file = users_file or write_users(Path.cwd() / "apptest-users.yaml")
    os.environ["DATABASE_URL"] = db_url
    os.environ["AUTH_CONFIG"] = str(users_file)
    reset_caches()
    return users_file


def page_path(page: str) -> str:
    """A repository-relative page file as AppTest wants it: relative to the entrypoint."""
    return os.path.relpath(ROOT / page, ENTRYPOINT.parent)


def new_app(timeout: float = 30) -> AppTest:
    return AppTest.from_file(str(ENTRYPOINT), default_timeout=timeout)


def login(at: AppTest, username: str, password: str) -> AppTest:
    """Fill and submit streamlit-authenticator's login form (the AppTest must be showing it).

    After a successful login the app waits one run before leaving the home page, until the
    browser has stored the login cookie (`dashboard.auth.cookie_pending`); in a browser the
    cookie manager starts that run, here it is run directly."""
    fields = {field.label: field for field in at.text_input}
    submit = [button for button in at.button if button.label == "Log in"]
    assert submit and {"Username", "Password"} <= fields.keys(), "no login form on the page"
    fields["Username"].input(username)
    fields["Password"].input(password)
    submit[0].click().run()
    if logged_in(at):
        at.run()
    return at


def app_as(
    role: str | None,
    db_url: str,
    *,
    page: str | None = None,
    users_file: Path | None = None,
    timeout: float = 30,
) -> AppTest:
    """The dashboard after logging in as `role` (None: not logged in), on `page` if given."""
    configure(db_url, users_file)
    at = new_app(timeout).run()
    assert not at.exception, at.exception
    if role is not None:
        login(at, role, PASSWORDS[role])
        assert not at.exception, at.exception
        if not logged_in(at):
            raise AssertionError(f"login as {role!r} failed: {[e.value for e in at.error]}")
    if page is not None:
        at.switch_page(page_path(page)).run()
    return at


def logged_in(at: AppTest) -> bool:
    from dashboard.auth import LOGOUT_KEY

    return any(button.key == LOGOUT_KEY for button in at.sidebar.button)


def nav_titles(at: AppTest) -> list[str]:
    """The page titles listed in the sidebar navigation, in order."""
    return [str(link.proto.label) for link in at.sidebar.get("page_link")]


def refused(at: AppTest) -> bool:
    """True when the page shows the permission refusal (or the not-logged-in notice)."""
    from dashboard.auth import FORBIDDEN, NOT_LOGGED_IN

    return any(error.value in (FORBIDDEN, NOT_LOGGED_IN) for error in at.main.error)
