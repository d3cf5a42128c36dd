"""Login lockout and server-side sessions behind the dashboard's login cookie."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from core.auth.audit import record
from core.auth.permissions import ROLES, SYSTEM, Actor, Role
from core.auth.users import DEMO_PASSWORDS, User, check_password, normalize_username
from core.models import LoginAttempt, UserSession, utcnow
from core.settings import get_settings

# Login abuse (issue 12, finding 6). Failures are counted per username *and* client: a
# client's first few failures cost nothing, then each one makes that client wait twice as long
# (15 s, 30 s, 1 min ... up to 15 min) before it may try that username again. Someone guessing
# from elsewhere slows only themselves. A much higher ceiling per username, over all clients,
# stops a distributed guess; it does not lock out clients this user logged in from before.
# A success resets its client's count; an admin's unlock clears them all.
CLIENT_FREE_FAILURES = 3
CLIENT_BASE_DELAY = timedelta(seconds=15)
MAX_DELAY = timedelta(minutes=15)
FAILURE_MEMORY = timedelta(hours=1)  # older failures are forgotten
USER_CEILING = 50  # failures for one username, all clients, within FAILURE_MEMORY
KNOWN_CLIENT_MEMORY = timedelta(days=30)
UNKNOWN_CLIENT = "-"
BAD_CREDENTIALS = "Username or password is incorrect."
LOCKED_OUT = (
    "Too many failed logins for this username from many places: it is locked. "
    "An admin can unlock it; otherwise try again within an hour."
)
EMPTY_CREDENTIALS = "Enter a username and a password."


def wait_message(wait: timedelta) -> str:
    seconds = max(1, int(wait.total_seconds() + 0.999))
    when = f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"
    return f"Too many failed logins for this username from here. Try again in {when}."


def client_delay(failures: int) -> timedelta:
    """How long a client waits after its `failures`-th failure in a row for one username."""
    if failures < CLIENT_FREE_FAILURES:
        return timedelta(0)
    delay: timedelta = CLIENT_BASE_DELAY * 2 ** min(failures - CLIENT_FREE_FAILURES, 16)
    return min(MAX_DELAY, delay)


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
    must_change: bool = False  # a one-time password: change it before anything else

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


def _failures(
    session: Session, username: str, now: datetime, client: str | None = None
) -> tuple[int, datetime | None]:
    """Uncleared failures for `username` (from `client`, if given) within FAILURE_MEMORY and
    after the last success (from that client), and the newest one's time."""
    since = now - FAILURE_MEMORY
    where = [LoginAttempt.username == username]
    if client is not None:
        where.append(LoginAttempt.client == client)
        last_ok = session.execute(
            select(func.max(LoginAttempt.at)).where(
                *where, LoginAttempt.succeeded.is_(True), LoginAttempt.at > since
            )
        ).scalar_one_or_none()
        since = max(since, last_ok) if last_ok is not None else since
    row = session.execute(
        select(func.count(), func.max(LoginAttempt.at)).where(
            *where,
            LoginAttempt.succeeded.is_(False),
            LoginAttempt.cleared_at.is_(None),
            LoginAttempt.at > since,
        )
    ).one()
    return int(row[0]), row[1]


def recent_failures(session: Session, username: str, now: datetime | None = None) -> int:
    """Failures for `username` over all clients that count towards the ceiling."""
    return _failures(session, normalize_username(username)[:_MAX_USERNAME], now or utcnow())[0]


def _known_client(session: Session, username: str, client: str, now: datetime) -> bool:
    """Whether `username` logged in successfully from `client` lately (exempt from the ceiling;
    its own delays still apply)."""
    if client == UNKNOWN_CLIENT:
        return False
    found = session.execute(
        select(LoginAttempt.id)
        .where(
            LoginAttempt.username == username,
            LoginAttempt.client == client,
            LoginAttempt.succeeded.is_(True),
            LoginAttempt.at > now - KNOWN_CLIENT_MEMORY,
        )
        .limit(1)
    ).first()
    return found is not None


def is_locked(session: Session, username: str, now: datetime | None = None) -> bool:
    """Whether the per-username ceiling is reached (new clients are refused)."""
    return recent_failures(session, username, now) >= USER_CEILING


def _refusal(
    session: Session, name: str, client: str, now: datetime
) -> tuple[str, timedelta | None] | None:
    """Why an attempt for `name` from `client` is refused before its password is checked."""
    count, newest = _failures(session, name, now, client)
    if newest is not None:
        wait = newest + client_delay(count) - now
        if wait > timedelta(0):
            return "client_delay", wait
    if recent_failures(session, name, now) >= USER_CEILING and not _known_client(
        session, name, client, now
    ):
        return "user_ceiling", None
    return None


def _client_key(client: str | None) -> str:
    text = "".join(c for c in (client or "").strip() if c.isprintable())[:64]
    return text or UNKNOWN_CLIENT


def login(
    session: Session,
    users: Mapping[str, User],
    username: str,
    password: str,
    *,
    session_hours: float,
    production: bool = False,
    now: datetime | None = None,
    client: str | None = None,
) -> LoginResult:
    """Check a login attempt against the client's delay and the username's ceiling, then the
    password; on success open a session. `client` is where the attempt comes from (the
    dashboard passes the client's address; see dashboard/auth.py for what it can know).

    Runs in the caller's transaction (commit it whatever the outcome: failures must count)."""

    now = now or utcnow()
    # Whatever was typed is stored and audited: keep it printable (no terminal escapes).
    name = "".join(c if c.isprintable() else "?" for c in normalize_username(username))
    name = name[:_MAX_USERNAME]
    if not name or not password:
        return LoginResult(False, EMPTY_CREDENTIALS)
    where = _client_key(client)
    who = Actor(name)  # the attempted name; no role until the password is proven
    _lock_username(session, name)
    refused = _refusal(session, name, where, now)
    if refused is not None:
        reason, wait = refused
        record(
            session, who, "login.refused_locked", name, {"reason": reason, "client": where}, at=now
        )
        message = LOCKED_OUT if wait is None else wait_message(wait)
        return LoginResult(False, message, locked=True)

    user = users.get(name)
    password_ok = check_password(password, user.password_hash if user else _DUMMY_HASH)
    ok = user is not None and password_ok
    details: dict[str, Any] = {"client": where}
    if ok and production and user is not None and (user.demo or password in DEMO_PASSWORDS):
        ok, details = False, {**details, "reason": "demo user refused in production"}
    session.add(LoginAttempt(username=name, at=now, succeeded=ok, client=where))
    session.flush()
    if not ok:
        record(session, who, "login.failed", name, details, at=now)
        count, _ = _failures(session, name, now, where)
        if recent_failures(session, name, now) == USER_CEILING:
            record(session, who, "login.locked_out", name, {"failures": USER_CEILING}, at=now)
        if count >= CLIENT_FREE_FAILURES:
            return LoginResult(False, wait_message(client_delay(count)), locked=True)
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
    return LoginResult(True, actor=actor, token=token, must_change=user.must_change_password)


@dataclass(frozen=True)
class LockState:
    """What the Users page shows about one username."""

    failures: int  # counted towards the ceiling (last hour, not cleared)
    locked: bool  # the ceiling is reached: new clients are refused
    last_login: datetime | None


def lock_state(session: Session, username: str, now: datetime | None = None) -> LockState:
    now = now or utcnow()
    name = normalize_username(username)
    failures = recent_failures(session, name, now)
    last_login = session.execute(
        select(func.max(LoginAttempt.at)).where(
            LoginAttempt.username == name, LoginAttempt.succeeded.is_(True)
        )
    ).scalar_one_or_none()
    return LockState(failures, failures >= USER_CEILING, last_login)


def unlock(session: Session, username: str, *, by: Actor, now: datetime | None = None) -> int:
    """Clear every counted failure of `username` (all clients): it may log in again at once.
    Audited; returns how many failures were cleared."""
    now = now or utcnow()
    name = normalize_username(username)
    _lock_username(session, name)
    result = session.execute(
        update(LoginAttempt)
        .where(
            LoginAttempt.username == name,
            LoginAttempt.succeeded.is_(False),
            LoginAttempt.cleared_at.is_(None),
        )
        .values(cleared_at=now)
    )
    cleared = int(getattr(result, "rowcount", 0) or 0)
    record(session, by, "login.unlocked", name, {"failures_cleared": cleared}, at=now)
    return cleared


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
