"""Login lockout and server-side sessions behind the dashboard's login cookie."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.auth.audit import record
from core.auth.permissions import ROLES, SYSTEM, Actor, Role
from core.auth.users import DEMO_PASSWORDS, User, check_password, normalize_username
from core.models import LoginAttempt, UserSession, utcnow
from core.settings import get_settings

LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = timedelta(minutes=15)
BAD_CREDENTIALS = "Username or password is incorrect."
LOCKED_OUT = (
    "Too many failed logins for this username. "
    f"Try again in {int(LOCKOUT_WINDOW.total_seconds() // 60)} minutes."
)
EMPTY_CREDENTIALS = "Enter a username and a password."
# last_seen_at is refreshed at most this often, so reruns do not all write to the database.
_SEEN_EVERY = timedelta(minutes=1)
_MAX_USERNAME = 255
# A real bcrypt hash (cost 12) checked for unknown usernames, so they cost as much as known ones.
_DUMMY_HASH = "$2b$12$hCsiDP1P0qKdYr9Ba2SiiO6TrAVcymlwSrq59FzLMbXxLkBzi66j6"


@dataclass(frozen=True)
class LoginResult:
    """What a login attempt decided. `token` (only on success) goes to the client, never to the
    database; `message` is safe to show and says nothing about whether the user exists."""

    ok: bool
    message: str | None = None
    actor: Actor | None = None
    token: str | None = None
    locked: bool = False

    def __repr__(self) -> str:  # the token is a credential: keep it out of logs
        return f"LoginResult(ok={self.ok}, actor={self.actor!r}, locked={self.locked})"


def hash_token(token: str) -> str:
    """What `user_sessions` stores: an HMAC of the token keyed by COOKIE_KEY, so a copy of the
    table alone cannot be matched against tokens, and rotating COOKIE_KEY ends every session."""
    key = get_settings().cookie_key.get_secret_value().encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def _lock_username(session: Session, username: str) -> None:
    """Serialise attempts for one username on PostgreSQL (count, then insert) so concurrent
    guesses cannot slip past the limit. SQLite writers are already serial (BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(b"login:" + username.encode()).digest()[:8], "big")
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key - (1 << 63)})


def recent_failures(session: Session, username: str, now: datetime | None = None) -> int:
    now = now or utcnow()
    count = session.execute(
        select(func.count())
        .select_from(LoginAttempt)
        .where(
            LoginAttempt.username == username,
            LoginAttempt.succeeded.is_(False),
            LoginAttempt.at > now - LOCKOUT_WINDOW,
        )
    ).scalar_one()
    return int(count)


def is_locked(session: Session, username: str, now: datetime | None = None) -> bool:

    return recent_failures(session, normalize_username(username)[:_MAX_USERNAME], now) >= (
        LOCKOUT_FAILURES
    )


def login(
    session: Session,
    users: Mapping[str, User],
    username: str,
    password: str,
    *,
    session_hours: float,
    production: bool = False,
    now: datetime | None = None,
) -> LoginResult:
    """Check a login attempt against lockout, then the password; on success open a session.

    Runs in the caller's transaction (commit it whatever the outcome: failures must count)."""

    now = now or utcnow()
    # Whatever was typed is stored and audited: keep it printable (no terminal escapes).
    name = "".join(c if c.isprintable() else "?" for c in normalize_username(username))
    name = name[:_MAX_USERNAME]
    if not name or not password:
        return LoginResult(False, EMPTY_CREDENTIALS)
    who = Actor(name)  # the attempted name; no role until the password is proven
    _lock_username(session, name)
    failures = recent_failures(session, name, now)
    if failures >= LOCKOUT_FAILURES:
        record(session, who, "login.refused_locked", name, {"failures": failures}, at=now)
        return LoginResult(False, LOCKED_OUT, locked=True)

    user = users.get(name)
    password_ok = check_password(password, user.password_hash if user else _DUMMY_HASH)
    ok = user is not None and password_ok
    details: dict[str, Any] = {}
    if ok and production and user is not None and (user.demo or password in DEMO_PASSWORDS):
        ok, details = False, {"reason": "demo user refused in production"}
    session.add(LoginAttempt(username=name, at=now, succeeded=ok))
    session.flush()
    if not ok:
        record(session, who, "login.failed", name, details, at=now)
        if failures + 1 >= LOCKOUT_FAILURES:
            record(session, who, "login.locked_out", name, {"failures": failures + 1}, at=now)
            return LoginResult(False, LOCKED_OUT, locked=True)
        return LoginResult(False, BAD_CREDENTIALS)

    assert user is not None
    actor = Actor(user.username, user.role)
    token = secrets.token_urlsafe(32)
    row = UserSession(
        token_hash=hash_token(token),
        username=user.username,
        role=user.role,
        created_at=now,
        expires_at=now + timedelta(hours=session_hours),
        last_seen_at=now,
    )
    session.add(row)
    session.flush()
    record(session, actor, "login.succeeded", user.username, {"session": row.id}, at=now)
    return LoginResult(True, actor=actor, token=token)


def _end(
    session: Session, row: UserSession, by: Actor, action: str, reason: str, now: datetime
) -> None:
    row.revoked_at = now
    row.revoked_reason = reason
    record_details = {"session": row.id, "reason": reason}

    record(session, by, action, row.username, record_details, at=now)


class NeedsWrite(Exception):
    """`resume(..., write=False)` found something to record: call it again in a write
    transaction. Keeps the common case (a live session, seen recently) a pure read, so clicks
    never queue behind SQLite's single writer."""


def resume(
    session: Session,
    token: str | None,
    *,
    users: Mapping[str, User] | None = None,
    now: datetime | None = None,
    write: bool = True,
) -> Actor | None:
    """The actor of a live session, or None. Called on every rerun: an expired, logged out or
    revoked session (or, given `users`, one whose user was removed or changed role) is over.

    With `write=False` nothing is changed: NeedsWrite is raised when the session must be marked
    ended or its last_seen_at refreshed."""
    if not token:
        return None
    now = now or utcnow()
    row = session.execute(
        select(UserSession).where(UserSession.token_hash == hash_token(token))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    user_changed = users is not None and (
        (user := users.get(row.username)) is None or user.role != row.role
    )
    expired = row.expires_at <= now
    stale = now - row.last_seen_at >= _SEEN_EVERY
    if not write and (expired or user_changed or stale):
        raise NeedsWrite
    if expired:
        _end(session, row, Actor(row.username, _role(row.role)), "session.expired", "expired", now)
        return None
    if user_changed:
        _end(session, row, SYSTEM, "session.revoked", "user removed or role changed", now)
        return None
    if stale:
        row.last_seen_at = now
    return Actor(row.username, _role(row.role))


def _role(value: str) -> Role | None:
    return value if value in ROLES else None


def logout(session: Session, token: str | None, *, now: datetime | None = None) -> bool:
    """End the session of `token`; True if a live session was ended."""
    if not token:
        return False
    now = now or utcnow()
    row = session.execute(
        select(UserSession).where(
            UserSession.token_hash == hash_token(token), UserSession.revoked_at.is_(None)
        )
    ).scalar_one_or_none()
    if row is None:
        return False
    _end(session, row, Actor(row.username, _role(row.role)), "logout", "logout", now)
    return True


def revoke_sessions(
    session: Session, username: str, *, by: Actor, reason: str, now: datetime | None = None
) -> int:
    """End every live session of `username` (admin revocation, password reset, removal)."""

    now = now or utcnow()
    rows = session.execute(
        select(UserSession).where(
            UserSession.username == normalize_username(username),
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
    ).scalars()
    ended = 0
    for row in rows:
        _end(session, row, by, "session.revoked", reason, now)
        ended += 1
    return ended


def live_sessions(session: Session, now: datetime | None = None) -> list[UserSession]:
    now = now or utcnow()
    return list(
        session.execute(
            select(UserSession)
            .where(UserSession.revoked_at.is_(None), UserSession.expires_at > now)
            .order_by(UserSession.username, UserSession.created_at)
        ).scalars()
    )
