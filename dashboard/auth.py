"""Login, the current actor, and the permission check every page starts with.

    from dashboard.auth import require

    actor = require("orders.view")   # first line of a page: refusal + st.stop() if not allowed

How sessions work, and why not the login library's own cookie
-------------------------------------------------------------
streamlit-authenticator 0.4.2 re-logs a browser in from a cookie holding a signed JWT of just
``{username, exp_date}``. Nothing on the server knows about it, so logout only asks the browser
to delete it: a copied cookie keeps working until it expires (30 days by default), through
logout, password resets and revocations. Its login form also checks the password before any
lockout could apply, keeps no record of the username a failed attempt used, and answers an
unknown username without running bcrypt (a timing oracle for who exists).

So cookie re-login is off, and what needs to be trusted happens in ``core.access``, against
the database:

- the login form (below) passes the username and password to ``core.access.login``, which
  applies the lockout first, checks the bcrypt hash from the users file (same credentials
  layout and hash format as streamlit-authenticator), and on success opens a server-side
  session: a random token whose SHA-256 alone is stored in ``user_sessions``;
- the token lives in this browser tab's server-side Streamlit session state (never in a widget,
  so the browser cannot set it) and is checked against the database on **every rerun**
  (``core.access.resume``): expired after SESSION_HOURS, ended by logout, a password reset, an
  admin's ``python -m core users revoke``, or a removed user or changed role; the next click
  after any of these shows the login form;
- nothing re-logs a browser in from a cookie, so there is no cookie to copy. Reloading the page
  asks for the password again: the price of not having a credential readable by page scripts
  (Streamlit can only set cookies from JavaScript, never HttpOnly).
"""

from __future__ import annotations

from typing import NoReturn

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import access
from core.access import Actor
from core.db import get_engine, session_scope
from core.settings import get_settings
from core.users import User, UsersError, load_users

TOKEN_KEY = "_auth_session_token"  # noqa: S105 (a session-state key, not a secret)
FORM_KEY = "login"
USERNAME_KEY = "login_username"
PASSWORD_KEY = "login_password"  # noqa: S105 (a widget key)
LOGOUT_KEY = "logout"
NOT_LOGGED_IN = "Please log in to see this page."
FORBIDDEN = "Your role does not give access to this page."
UNAVAILABLE = "The database is not reachable right now, so nobody can be logged in. Try again soon."


def _refuse(message: str) -> NoReturn:
    st.error(message, icon=":material/block:")
    st.stop()


def current_actor() -> Actor | None:
    """The logged-in actor, checked against the database on this rerun; None when there is no
    live session (never logged in, logged out, expired or revoked)."""
    token = st.session_state.get(TOKEN_KEY)
    if not token:
        return None
    try:
        users = load_users(get_settings().auth_config)
    except UsersError:
        users = {}  # an unreadable users file ends every session rather than trusting stale roles
    engine = get_engine()
    try:
        try:
            with session_scope(engine, write=False) as session:
                actor = access.resume(session, token, users=users, write=False)
        except access.NeedsWrite:
            with session_scope(engine) as session:
                actor = access.resume(session, token, users=users)
    except SQLAlchemyError:
        _refuse(UNAVAILABLE)  # fail closed, without a stack trace
    if actor is None:
        st.session_state.pop(TOKEN_KEY, None)
    return actor


def require(permission: str) -> Actor:
    """The logged-in actor if its role holds `permission`; otherwise a refusal that names no
    data, and the page stops here."""
    actor = current_actor()
    if actor is None:
        _refuse(NOT_LOGGED_IN)
    if not access.allowed(actor.role, permission):
        _refuse(FORBIDDEN)
    return actor


def login_form() -> Actor | None:
    """Draw the login form; the actor once a submitted login succeeds, else None.

    The form sits in a placeholder that is emptied on success, so the caller can go on drawing
    the app in the same run (no st.rerun() needed)."""
    placeholder = st.empty()
    with placeholder.form(FORM_KEY, clear_on_submit=False):
        st.subheader("Log in")
        username = st.text_input("Username", key=USERNAME_KEY, autocomplete="username")
        password = st.text_input(
            "Password", type="password", key=PASSWORD_KEY, autocomplete="current-password"
        )
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return None
    settings = get_settings()
    try:
        users = load_users(settings.auth_config)
    except UsersError:
        # The reason (with the file's path) is for operators: `python -m core users list`.
        st.error("Login is unavailable: the users file cannot be read. Ask an operator.")
        return None
    if not users:
        st.warning(
            "No users are configured yet: an operator adds them with `python -m core users add`."
        )
        return None
    try:
        result = _login(users, username, password)
    except SQLAlchemyError:
        _refuse(UNAVAILABLE)
    if not result.ok or result.token is None:
        st.error(result.message or access.BAD_CREDENTIALS)
        return None
    st.session_state[TOKEN_KEY] = result.token
    placeholder.empty()
    return result.actor


def _login(users: dict[str, User], username: str, password: str) -> access.LoginResult:
    settings = get_settings()
    with session_scope(get_engine()) as session:
        return access.login(
            session,
            users,
            username,
            password,
            session_hours=settings.session_hours,
            production=settings.is_production,
        )


def logout() -> None:
    """End the server-side session, then forget the token."""
    token = st.session_state.pop(TOKEN_KEY, None)
    if token:
        with session_scope(get_engine()) as session:
            access.logout(session, token)
