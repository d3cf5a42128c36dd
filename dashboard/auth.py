"""Login, the current actor, and the permission check every page starts with.

    from dashboard.auth import require

    actor = require("orders.view")   # first line of a page: refusal + st.stop() if not allowed

How login works: streamlit-authenticator's widget and cookie, core.auth's rules
---------------------------------------------------------------------------------
The entrypoint calls `authenticate()` once per run. It builds a
``streamlit_authenticator.Authenticate`` (0.4.2) from the users file (AUTH_CONFIG, already in
the library's credentials layout, passed as a dict), with COOKIE_KEY as its cookie key and an
expiry of SESSION_HOURS, and lets the library draw the login form and keep its re-login cookie.
On its own the library is not enough for money: its cookie is a JWT of ``{username, exp_date}``
that nothing on the server knows about (logout only asks the browser to delete it, so a copy
keeps working through logout, password resets and revocations), and its form checks the
password before any lockout, answers an unknown username without running bcrypt (a timing
oracle) and keeps no record of failures. So the two objects its widget calls are replaced by
adapters (`Authenticate.login` only calls ``authentication_controller.login`` and
``cookie_controller.get_cookie``/``set_cookie``; `Authenticate.logout` only calls
``authentication_controller.logout`` and ``cookie_controller.delete_cookie``):

- `_CoreLogin` stands in for the authentication controller. A submitted form goes to
  ``core.auth.sessions.login``: the lockout first (per username and client, with growing
  delays, under a higher per-username ceiling; unknown usernames alike, counted in the
  database; see `login_client` for what "client" is), then the bcrypt hash; one message for a wrong
  password or an unknown user, one for a locked username; every outcome audited. A success
  opens a server-side session: a random token of which ``user_sessions`` stores only an HMAC
  keyed by COOKIE_KEY. Only then is the library told who logged in (through its own token
  login, which fills ``st.session_state`` as its apps expect), and it writes the cookie.
- `_SessionCookie` stands in for the cookie controller. Reading is the library's own
  (``st.context.cookies``, HS256 signature with COOKIE_KEY, ``exp_date``), and anything it
  cannot read counts as no cookie. Writing uses the library's format and CookieManager with one
  more claim, the session token (`cookie_value`; SameSite=Strict, Secure when the page is
  served over https). What the library read logs in only through `cookie_actor`: the cookie
  must name a live session (not expired, not logged out, not ended by a password reset or
  ``python -m core users revoke``) of the user it names, still in the users file with the same
  role. The library's own cookies (no session claim) log nobody in. A cookie that fails this is
  deleted, and the rest of that browser session does not read it again.
- The token is also kept in this tab's server-side session state and checked against the
  database on **every rerun** (`current_actor`); once its session is over, the token and the
  library's session state are cleared and only the login form is shown.
- Logout ends the server-side session first, then asks the library to log out and delete the
  cookie; a copy of the cookie taken before is refused from then on.

Two Streamlit details shape the code. The cookie is written by a component in the browser, so
the run that writes it must not be cut short by ``st.rerun`` or ``st.switch_page``: the home
page waits one run after a login (`cookie_pending`; the component reruns the app once the
cookie is stored), and a logout click is handled at the top of the run it starts, not with a
rerun. And a cookie written by JavaScript cannot be HttpOnly: a script running in the page could
read it, one more reason it is worth nothing without a live server-side session.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import jwt
import streamlit as st
import streamlit_authenticator as stauth
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from core.auth import manage, permissions, sessions
from core.auth.permissions import Actor
from core.auth.users import User, UsersError, as_credentials, load_users
from core.db import get_engine, session_scope
from core.settings import get_settings
from dashboard.safe import body

TOKEN_KEY = "_auth_session_token"  # noqa: S105 (a session-state key, not a secret)
COOKIE_PENDING_KEY = "_auth_cookie_pending"
FORM_KEY = "login"
# Not "logout": streamlit-authenticator keeps its own flag under that session-state key.
LOGOUT_KEY = "log_out"
COOKIE_NAME = "payments_console_session"
LOGIN_FIELDS = {
    "Form name": "Log in",
    "Username": "Username",
    "Password": "Password",
    "Login": "Log in",
}
# What streamlit-authenticator keeps in st.session_state about who is logged in.
LIBRARY_STATE = ("name", "username", "authentication_status", "email", "roles")
NOT_LOGGED_IN = "Please log in to see this page."
FORBIDDEN = "Your role does not give access to this page."
UNAVAILABLE = "The database is not reachable right now, so nobody can be logged in. Try again soon."
USERS_UNREADABLE = "Login is unavailable: the users file cannot be read. Ask an operator."
NO_USERS = "No users are configured yet: an operator adds them with `python -m core users add`."


def login_client() -> str | None:
    """Where a login attempt comes from, as far as the dashboard can know.

    Streamlit 1.67 offers `st.context.ip_address` (the WebSocket peer's address; None when it
    is localhost) and `st.context.headers` (the HTTP headers of the page's first request).
    Behind a reverse proxy the peer is the proxy, so every user would share one "client": set
    LOGIN_CLIENT_HEADER to the header your proxy overwrites with the real address (X-Real-IP,
    or X-Forwarded-For, of which the last entry, the one your proxy added, is used). Never set
    it without such a proxy: a header is whatever the browser sends. Clients that share an
    address (an office NAT) share their delays; the per-username ceiling is the backstop."""
    header = get_settings().login_client_header.strip()
    if header:
        value = st.context.headers.get(header)
        if value:
            return value.split(",")[-1].strip() or None
    return st.context.ip_address


REFUSAL_TITLES = {
    NOT_LOGGED_IN: "Please log in",
    FORBIDDEN: "Not available to your role",
    UNAVAILABLE: "Login unavailable",
}
# The home page ("/", which sends each role to its landing page): the way back from a refusal.
_home: list[st.Page] = []


def set_home(page: st.Page) -> None:
    """Called by the entrypoint with its home page, for the refusal's link back."""
    _home[:] = [page]


def _refuse(message: str) -> NoReturn:
    """A refusal page: a title, the message (naming no data), and the way back."""
    st.title(REFUSAL_TITLES.get(message, "Not available"))  # markup: console text
    st.error(message, icon=":material/block:")  # markup: console text (the constants above)
    if _home and message != UNAVAILABLE:
        st.page_link(_home[0], label="Back to the console", icon=":material/home:")
    st.stop()


# --- The session behind a token or a cookie -----------------------------------------------------


def _users() -> dict[str, User] | None:
    """The users file; None when it cannot be read (the reason is for operators:
    `python -m core users list`)."""
    try:
        return load_users(get_settings().auth_config)
    except UsersError:
        return None


def _resume(token: str, users: Mapping[str, User] | None) -> Actor | None:
    """The actor of `token`'s live session, checked in the database; a read unless something
    must be recorded. An unreadable users file (None) ends every session rather than trusting
    stale roles."""
    engine = get_engine()
    try:
        try:
            with session_scope(engine, write=False) as session:
                return sessions.resume(session, token, users=users or {}, write=False)
        except sessions.NeedsWrite:
            with session_scope(engine) as session:
                return sessions.resume(session, token, users=users or {})
    except SQLAlchemyError:
        _refuse(UNAVAILABLE)  # fail closed, without a stack trace


def _forget() -> None:
    """Drop the token and the library's idea of who is logged in."""
    st.session_state.pop(TOKEN_KEY, None)
    for key in LIBRARY_STATE:
        if st.session_state.get(key) is not None:
            st.session_state[key] = None


def current_actor() -> Actor | None:
    """The logged-in actor, checked against the database on this rerun; None when there is no
    live session (never logged in, logged out, expired or revoked)."""
    return _session_actor(_users())


def _session_actor(users: Mapping[str, User] | None) -> Actor | None:
    token = st.session_state.get(TOKEN_KEY)
    actor = _resume(token, users) if isinstance(token, str) and token else None
    if actor is None:
        _forget()
    return actor


def cookie_actor(claims: object, users: Mapping[str, User] | None = None) -> Actor | None:
    """Whom a re-login cookie logs in: nobody, unless it names a live server-side session of
    the user it names. `claims` is what the library read from the cookie (a dict once its
    signature and `exp_date` hold); anything else, and any cookie without a session, is refused.
    `users` is the users file as this run read it (read now if not given)."""
    if not isinstance(claims, Mapping):
        return None
    token, username = claims.get("session"), claims.get("username")
    if not isinstance(token, str) or not token or not isinstance(username, str):
        return None
    actor = _resume(token, users if users is not None else _users())
    return actor if actor is not None and actor.username == username else None


def cookie_value(username: str, token: str, expires: datetime) -> str:
    """The login cookie: streamlit-authenticator's JWT (`username`, `exp_date`, HS256 with
    COOKIE_KEY), plus the session token."""
    claims = {"username": username, "exp_date": expires.timestamp(), "session": token}
    return jwt.encode(claims, get_settings().cookie_key.get_secret_value(), algorithm="HS256")


def require(permission: str) -> Actor:
    """The logged-in actor if its role holds `permission`; otherwise a refusal that names no
    data, and the page stops here."""
    actor = current_actor()
    if actor is None:
        _refuse(NOT_LOGGED_IN)
    if not permissions.allowed(actor.role, permission):
        _refuse(FORBIDDEN)
    return actor


def may(actor: Actor, permission: str) -> bool:
    """Whether `actor` may do `permission`: for showing or hiding a part of a page (core checks
    again when it is used)."""
    return permissions.allowed(actor.role, permission)


def password_change_required(actor: Actor) -> bool:
    """Whether `actor` still holds a one-time password (set by an admin on the Users page)."""
    try:
        return manage.must_change_password(get_settings().auth_config, actor.username)
    except UsersError:
        return False  # an unreadable users file already ends every session


def password_change_form(actor: Actor) -> None:
    """The only thing a user with a one-time password sees: a form to replace it."""
    st.title("Choose your password")
    st.info("Your password was set by an admin for one use. Choose your own to continue.")
    with st.form("change_password"):
        current = st.text_input("Current (one-time) password", type="password")
        new = st.text_input("New password (at least 12 characters)", type="password")
        again = st.text_input("Repeat the new password", type="password")
        if not st.form_submit_button("Change password"):
            return
    if new != again:
        st.error("The two new passwords differ.")
        return
    try:
        with session_scope(get_engine()) as session:
            manage.change_password(session, actor, get_settings().auth_config, current, new)
    except UsersError as exc:
        st.error(body(str(exc)))
        return
    except SQLAlchemyError:
        _refuse(UNAVAILABLE)
    st.rerun()


def cookie_pending() -> bool:
    """True in the run that logged in with the password: its cookie is still being written by
    the browser, so this run must not be cut short by a page switch or a rerun."""
    return bool(st.session_state.get(COOKIE_PENDING_KEY))


# --- streamlit-authenticator, with core.auth behind it ---------------------------------------


class _SessionCookie:
    """Stands in for the library's CookieController (see the module docstring)."""

    def __init__(self, library: Any, slot: DeltaGenerator) -> None:
        self._library = library
        self._slot = slot  # where the cookie manager's invisible components are drawn

    def get_cookie(self) -> dict[str, Any] | None:
        try:
            claims = self._library.get_cookie()
        except Exception:  # e.g. a forged "alg": "none" token: no cookie, never a crash
            return None
        return claims if isinstance(claims, dict) else None

    def set_cookie(self) -> None:
        token, username = st.session_state.get(TOKEN_KEY), st.session_state.get("username")
        if not token or not username:
            return
        model = self._library.cookie_model
        # Naive local time, as the library does: the browser reads it as its local time.
        expires = datetime.now() + timedelta(hours=get_settings().session_hours)
        secure = urlsplit(st.context.url or "").scheme == "https"
        with self._slot:
            model.cookie_manager.set(
                model.cookie_name,
                cookie_value(username, token, expires),
                expires_at=expires,
                secure=secure or None,
            )

    def delete_cookie(self) -> None:
        with self._slot:
            self._library.delete_cookie()


_LOCKS_GUARD = threading.Lock()
LOGIN_LOCK_KEY = "_auth_login_lock"


def _login_lock() -> Any:
    """This browser session's login lock (shared by its concurrent runs)."""
    with _LOCKS_GUARD:
        lock = st.session_state.get(LOGIN_LOCK_KEY)
        if lock is None or not hasattr(lock, "acquire"):
            lock = threading.Lock()
            st.session_state[LOGIN_LOCK_KEY] = lock
        return lock


class _CoreLogin:
    """Stands in for the library's AuthenticationController (see the module docstring)."""

    def __init__(self, library: Any, cookie: _SessionCookie, users: dict[str, User] | None):
        self._library = library
        self._cookie = cookie
        self._users = users
        self.actor: Actor | None = None
        self.error: str | None = None
        self.warning: str | None = None

    def login(
        self,
        username: str | None = None,
        password: str | None = None,
        *_: object,
        token: object = None,
        **__: object,
    ) -> bool:
        if token is not None:
            return self._from_cookie(token)
        return self._from_form(username or "", password or "")

    def logout(self, callback: Any = None) -> None:
        self._library.logout(callback)

    def _from_cookie(self, claims: object) -> bool:
        actor = cookie_actor(claims, self._users)
        if actor is None or not isinstance(claims, Mapping):
            # Over (or never a session): delete it, and stop reading it for the rest of this
            # browser session (the library's logout flag; the cookies a session sees never
            # change), so the login form's reruns do not check it again.
            self._cookie.delete_cookie()
            st.session_state["logout"] = True
            return False
        st.session_state[TOKEN_KEY] = claims["session"]
        self._signed_in(actor)
        return True

    def _from_form(self, username: str, password: str) -> bool:
        if self._users is None:
            self.error = USERS_UNREADABLE
            return False
        if not self._users:
            self.warning = NO_USERS
            return False
        # A double click on "Log in" starts a second run of this browser session while the
        # first is still checking the password (Streamlit's fast reruns): the runs take turns,
        # and the second finds the session the first opened.
        with _login_lock():
            if self._already_signed_in(username):
                return True
            settings = get_settings()
            try:
                with session_scope(get_engine()) as session:
                    result = sessions.login(
                        session,
                        self._users,
                        username,
                        password,
                        session_hours=settings.session_hours,
                        production=settings.is_production,
                        client=login_client(),
                    )
            except SQLAlchemyError:
                _refuse(UNAVAILABLE)
            if result.ok and result.token is not None:
                st.session_state[TOKEN_KEY] = result.token
        if not result.ok or result.actor is None or result.token is None:
            st.session_state["authentication_status"] = False
            self.error = result.message or sessions.BAD_CREDENTIALS
            return False
        st.session_state[TOKEN_KEY] = result.token
        st.session_state[COOKIE_PENDING_KEY] = True
        self._signed_in(result.actor)
        return True

    def _already_signed_in(self, username: str) -> bool:
        """A repeated submission (a double click on "Log in") of a browser session that the
        first one already signed in as `username` reuses that session: one login, one
        server-side session."""
        token = st.session_state.get(TOKEN_KEY)
        if not isinstance(token, str) or not token:
            return False
        actor = _resume(token, self._users)
        if actor is None or actor.username != username:
            return False
        self._signed_in(actor)
        return True

    def _signed_in(self, actor: Actor) -> None:
        """Tell the library who logged in: its token login fills its session state."""
        self._library.login(token={"username": actor.username})
        self.actor = actor


def _authenticator(users: dict[str, User] | None) -> tuple[Any, _CoreLogin]:
    slot = st.container()
    settings = get_settings()
    with slot:  # the constructor draws the cookie manager (an invisible component)
        authenticator = stauth.Authenticate(
            as_credentials(users or {}),
            cookie_name=COOKIE_NAME,
            cookie_key=settings.cookie_key.get_secret_value(),
            cookie_expiry_days=settings.session_hours / 24,
            auto_hash=False,
            # The library waits before reading its cookie for the CookieManager's sake; 0.4.2
            # reads st.context.cookies, which is there from the start.
            login_sleep_time=0,
        )
    cookie = _SessionCookie(authenticator.cookie_controller, slot)
    controller = _CoreLogin(authenticator.authentication_controller, cookie, users)
    authenticator.cookie_controller = cookie
    authenticator.authentication_controller = controller
    return authenticator, controller


def authenticate(product: str = "Payments console", environment: str = "") -> Actor | None:
    """The logged-in actor for this run, or None with the login form drawn (the caller stops);
    the login page names the product and the environment it logs into.

    Called once per run by the entrypoint, before any page: handles a click on the sidebar's
    logout button, checks the session, then lets the library re-log in from its cookie or draw
    its login form."""
    st.session_state.pop(COOKIE_PENDING_KEY, None)  # the run after a login: the cookie is stored
    users = _users()
    authenticator, controller = _authenticator(users)
    if st.session_state.get(LOGOUT_KEY):  # clicked on the previous run
        _logout(authenticator)
    actor = _session_actor(users)
    if actor is not None:
        return actor
    form = st.empty()
    with form.container():
        st.title(product)  # markup: console text (PRODUCT)
        if environment:
            st.caption(environment)  # markup: console text (from settings)
        authenticator.login(location="main", fields=LOGIN_FIELDS, key=FORM_KEY)
    if controller.actor is not None:
        form.empty()  # the page is drawn in this same run
        return controller.actor
    if controller.error:
        st.error(body(controller.error))
    if controller.warning:
        st.warning(controller.warning)  # markup: console text (NO_USERS)
    return None


def _logout(authenticator: Any) -> None:
    """End the server-side session (so every copy of the cookie is dead), then let the library
    forget the user and delete the cookie."""
    token = st.session_state.get(TOKEN_KEY)
    try:
        if token:
            with session_scope(get_engine()) as session:
                sessions.logout(session, token)
    except SQLAlchemyError:
        _refuse(UNAVAILABLE)
    finally:
        if st.session_state.get("authentication_status"):
            authenticator.logout(location="unrendered")
        else:
            authenticator.cookie_controller.delete_cookie()
        _forget()
