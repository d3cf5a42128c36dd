"""User management for the admin Users page: list users with role, last login and lock state;
unlock; revoke sessions; change role; add a user with a one-time password; and a user's own
change of that password at first login. Every change is audited.

Each change runs in one database transaction: sessions ended and the audit entry written,
then the users file replaced last, before the commit (as `python -m core users` does), so a
failure leaves nothing changed or sessions ended with the file unchanged (the safe side)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.auth import sessions
from core.auth.audit import record
from core.auth.permissions import Actor, require
from core.auth.users import (
    User,
    UsersError,
    add_user_with_one_time_password,
    change_own_password,
    change_role,
    load_users,
    normalize_username,
    save_users,
)


@dataclass(frozen=True)
class UserRow:
    username: str
    name: str
    role: str
    last_login: datetime | None
    failed_logins: int  # counted towards the per-username ceiling (last hour)
    locked: bool
    live_sessions: int
    must_change_password: bool


def list_users(session: Session, actor: Actor, path: Path) -> list[UserRow]:
    require(actor, "users.manage")
    users = load_users(path)
    live: dict[str, int] = {}
    for row in sessions.live_sessions(session):
        live[row.username] = live.get(row.username, 0) + 1
    rows = []
    for user in sorted(users.values(), key=lambda u: u.username):
        state = sessions.lock_state(session, user.username)
        rows.append(
            UserRow(
                user.username,
                user.name,
                user.role,
                state.last_login,
                state.failures,
                state.locked,
                live.get(user.username, 0),
                user.must_change_password,
            )
        )
    return rows


def _known(users: Mapping[str, User], username: str) -> str:
    name = normalize_username(username)
    if name not in users:
        raise UsersError(f"No user {name!r}.")
    return name


def unlock(session: Session, actor: Actor, path: Path, username: str) -> int:
    require(actor, "users.manage")
    return sessions.unlock(session, _known(load_users(path), username), by=actor)


def revoke(session: Session, actor: Actor, path: Path, username: str) -> int:
    require(actor, "users.manage")
    name = _known(load_users(path), username)
    ended = sessions.revoke_sessions(session, name, by=actor, reason="revoked by an admin")
    record(session, actor, "sessions.revoke", name, {"sessions_ended": ended})
    return ended


def set_role(session: Session, actor: Actor, path: Path, username: str, role: str) -> int:
    """Change a user's role; their live sessions end (they log in again with the new role)."""
    require(actor, "users.manage")
    users = load_users(path)
    name = _known(users, username)
    if name == actor.username:
        raise UsersError("You cannot change your own role (ask another admin).")
    updated = change_role(users, name, role)
    ended = sessions.revoke_sessions(session, name, by=actor, reason="role changed")
    details: dict[str, Any] = {"from": users[name].role, "to": role, "sessions_ended": ended}
    record(session, actor, "user.role_changed", name, details)
    save_users(path, updated)
    return ended


def add(
    session: Session, actor: Actor, path: Path, username: str, role: str, name: str | None = None
) -> str:
    """Add a user; returns their one-time password (show it once, store it nowhere)."""
    require(actor, "users.manage")
    updated, password = add_user_with_one_time_password(
        load_users(path), username, role, name=name or None
    )
    record(
        session,
        actor,
        "user.added",
        normalize_username(username),
        {"role": role, "one_time_password": True},
    )
    save_users(path, updated)
    return password


def must_change_password(path: Path, username: str) -> bool:
    user = load_users(path).get(normalize_username(username))
    return user is not None and user.must_change_password


def change_password(session: Session, actor: Actor, path: Path, current: str, new: str) -> None:
    """The logged-in user replaces their password (the one-time one at first login)."""
    updated = change_own_password(load_users(path), actor.username, current, new)
    record(session, actor, "user.password_changed", actor.username, {})
    save_users(path, updated)
