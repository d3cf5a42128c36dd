"""`python -m core users ...`: manage dashboard users in the AUTH_CONFIG file.

Passwords are prompted (twice, not echoed), never taken from the command line where they would
land in shell history and process listings. A password reset or a removal also ends every live
session of that user; `revoke` ends them without changing anything else.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Mapping
from pathlib import Path

from core.auth import sessions
from core.auth.audit import record
from core.auth.permissions import ROLES, Actor
from core.auth.users import (
    DEMO_USERS,
    User,
    UsersError,
    add_user,
    load_users,
    normalize_username,
    remove_user,
    save_users,
    set_password,
    with_demo_users,
)
from core.db import get_engine, session_scope
from core.settings import Settings, get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="users_command", required=True, metavar="action")
    add = sub.add_parser("add", help="add a user (password prompted)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--name", help="display name (default: the username)")
    remove = sub.add_parser("remove", help="remove a user and end their sessions")
    remove.add_argument("username")
    reset = sub.add_parser("reset-password", help="set a new password and end their sessions")
    reset.add_argument("username")
    revoke = sub.add_parser("revoke", help="end every live session of a user")
    revoke.add_argument("username")
    unlock = sub.add_parser("unlock", help="clear a user's failed logins (lockout and delays)")
    unlock.add_argument("username")
    sub.add_parser("list", help="list users, roles, lock state and live sessions")
    sub.add_parser("demo", help="create the demo users (refused when APP_ENV=production)")


def _operator() -> Actor:
    """Who ran the command, as the audit log records it."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor(f"cli:{name}")


def _prompt_password() -> str:
    first = getpass.getpass("New password (at least 12 characters): ")
    second = getpass.getpass("Repeat the password: ")
    if first != second:
        raise UsersError("The two passwords differ.")
    return first


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        return _run(args, settings)
    except UsersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    path = settings.auth_config
    users = load_users(path)
    command: str = args.users_command
    operator = _operator()

    if command == "list":
        counts: dict[str, int] = {}
        with session_scope(get_engine(settings.database_url), write=False) as session:
            for row in sessions.live_sessions(session):
                counts[row.username] = counts.get(row.username, 0) + 1
            locked = {name for name in users if sessions.lock_state(session, name).locked}
        if not users:
            print(f"no users in {path}")
        for user in sorted(users.values(), key=lambda u: u.username):
            demo = " (demo)" if user.demo else ""
            demo += " LOCKED" if user.username in locked else ""
            live_count = counts.get(user.username, 0)
            print(f"{user.username:<24} {user.role:<8} live sessions: {live_count}{demo}")
        return 0

    if command == "demo":
        if settings.is_production:
            raise UsersError("Demo users are refused when APP_ENV=production.")
        save_users(path, with_demo_users(users))
        print(f"demo users ready in {path}: " + ", ".join(DEMO_USERS))
        return 0

    username: str = args.username
    if command == "add":
        updated = add_user(users, username, args.role, _prompt_password(), name=args.name)
        _apply(settings, operator, "user.added", username, {"role": args.role}, save=updated)
        print(f"added {username.strip().lower()} ({args.role})")
        return 0
    if command == "remove":
        updated = remove_user(users, username)
        ended = _apply(
            settings, operator, "user.removed", username, {}, save=updated, revoke="user removed"
        )
        print(f"removed {username}; ended {ended} live session(s)")
        return 0
    if command == "reset-password":
        updated = set_password(users, username, _prompt_password())
        ended = _apply(
            settings,
            operator,
            "user.password_reset",
            username,
            {},
            save=updated,
            revoke="password reset",
        )
        print(f"password changed for {username}; ended {ended} live session(s)")
        return 0
    if command == "unlock":
        # Unknown usernames are cleared too: their failures count the same way.
        with session_scope(get_engine(settings.database_url)) as session:
            cleared = sessions.unlock(session, username, by=operator)
        print(f"cleared {cleared} failed login(s) of {normalize_username(username)}")
        return 0
    if command == "revoke":
        if username.strip().lower() not in users:
            raise UsersError(f"No user {username!r}.")
        ended = _apply(
            settings, operator, "sessions.revoke", username, {}, revoke="revoked by an admin"
        )
        print(f"ended {ended} live session(s) of {username}")
        return 0
    raise UsersError(f"unknown action {command!r}")  # pragma: no cover (argparse refuses it)


def _apply(
    settings: Settings,
    operator: Actor,
    action: str,
    username: str,
    details: dict[str, str],
    *,
    save: Mapping[str, User] | None = None,
    revoke: str | None = None,
) -> int:
    """End the user's sessions (if asked), audit the change and write the users file, in one
    database transaction: the file is written last, before the commit, so a failure leaves
    either nothing changed or sessions ended with the file unchanged (the safe side)."""
    name = normalize_username(username)
    with session_scope(get_engine(settings.database_url)) as session:
        ended = 0
        if revoke is not None:
            ended = sessions.revoke_sessions(session, name, by=operator, reason=revoke)
        record(session, operator, action, name, {**details, "sessions_ended": ended})
        if save is not None:
            save_users(Path(settings.auth_config), save)
    return ended
