"""The users file named by AUTH_CONFIG: usernames, bcrypt hashes and roles.

The file uses streamlit-authenticator's `credentials` layout, so it stays readable by that
library and by people:

    credentials:
      usernames:
        alice:
          name: Alice
          password: $2b$12$...        # bcrypt hash, never a plain password
          roles: [finance]
          demo: false                 # demo users are refused in production
          must_change_password: false # a one-time password: changed at the next login

Writes are atomic (temporary file + rename) and the file is created readable by its owner only.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import bcrypt
import yaml

from core.auth.permissions import ROLES, Role

MIN_PASSWORD_CHARS = 12
# bcrypt only reads the first 72 bytes; longer passwords would silently share a hash.
MAX_PASSWORD_BYTES = 72
BCRYPT_ROUNDS = 12
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Demo mode only (`python -m core users demo`); production refuses these users and passwords.
DEMO_USERS: dict[str, tuple[Role, str]] = {
    "admin": ("admin", "admin-demo"),
    "finance": ("finance", "finance-demo"),
    "support": ("support", "support-demo"),
}
DEMO_PASSWORDS = frozenset(password for _, password in DEMO_USERS.values())


class UsersError(Exception):
    """The users file or a requested change is not valid; the message is safe to show."""


@dataclass(frozen=True)
class User:
    username: str
    name: str
    role: Role
    password_hash: str
    demo: bool = False
    must_change_password: bool = False

    def __repr__(self) -> str:  # never show the hash in logs or tracebacks
        return f"User(username={self.username!r}, role={self.role!r}, demo={self.demo})"


def normalize_username(username: str) -> str:
    """Usernames are case-insensitive and compared without surrounding spaces."""
    return username.strip().lower()


def validate_username(username: str) -> str:
    name = normalize_username(username)
    if not USERNAME_RE.fullmatch(name):
        raise UsersError(
            "A username is 1 to 64 characters: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsersError(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise UsersError(f"A password may not exceed {MAX_PASSWORD_BYTES} bytes (bcrypt's limit).")
    if password != password.strip():
        raise UsersError("A password may not start or end with spaces.")
    if password in DEMO_PASSWORDS:
        raise UsersError("That password is a published demo password; choose another.")


def hash_password(password: str, *, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def check_password(password: str, password_hash: str) -> bool:
    """Constant-time bcrypt check; False (never an exception) for malformed input."""
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:  # too long for bcrypt, or not a bcrypt hash
        return False


def load_users(path: Path) -> dict[str, User]:
    """Every user in the file, by username. A missing file means no users yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersError(f"Cannot read the users file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise UsersError(f"The users file {path} is not valid YAML.") from None
    entries = (data.get("credentials") or {}).get("usernames") or {}
    if not isinstance(entries, dict):
        raise UsersError(f"The users file {path} has no credentials.usernames mapping.")
    users: dict[str, User] = {}
    for raw_name, entry in entries.items():
        try:
            username = validate_username(str(raw_name))
        except UsersError:
            raise UsersError(f"The users file {path} holds an invalid username.") from None
        if not isinstance(entry, dict):
            raise UsersError(f"User {username!r} in {path} is not a mapping.")
        roles = entry.get("roles") or []
        role = roles[0] if isinstance(roles, list) and len(roles) == 1 else None
        if role not in ROLES:
            raise UsersError(f"User {username!r} in {path} needs exactly one role of {ROLES}.")
        password_hash = str(entry.get("password") or "")
        if not password_hash.startswith("$2"):
            raise UsersError(f"User {username!r} in {path} has no bcrypt password hash.")
        users[username] = User(
            username=username,
            name=str(entry.get("name") or username),
            role=cast(Role, role),
            password_hash=password_hash,
            demo=bool(entry.get("demo", False)),
            must_change_password=bool(entry.get("must_change_password", False)),
        )
    return users


def as_credentials(users: Mapping[str, User]) -> dict[str, Any]:
    """streamlit-authenticator's credentials dict (also the file's layout)."""
    return {
        "usernames": {
            user.username: {
                "name": user.name,
                "password": user.password_hash,
                "roles": [user.role],
                "demo": user.demo,
                **({"must_change_password": True} if user.must_change_password else {}),
            }
            for user in sorted(users.values(), key=lambda u: u.username)
        }
    }


def save_users(path: Path, users: Mapping[str, User]) -> None:
    """Replace the file atomically, readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"credentials": as_credentials(users)}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("# Managed by `python -m core users`. Passwords are bcrypt hashes.\n")
            handle.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_user(
    users: Mapping[str, User], username: str, role: str, password: str, *, name: str | None = None
) -> dict[str, User]:
    """A copy of `users` with a new user; the password must meet the rules."""
    username = validate_username(username)
    if username in users:
        raise UsersError(f"User {username!r} already exists.")
    if role not in ROLES:
        raise UsersError(f"Unknown role {role!r}: choose one of {', '.join(ROLES)}.")
    validate_password(password)
    user = User(username, name or username, role, hash_password(password))
    return {**users, username: user}


def remove_user(users: Mapping[str, User], username: str) -> dict[str, User]:
    username = normalize_username(username)
    if username not in users:
        raise UsersError(f"No user {username!r}.")
    return {name: user for name, user in users.items() if name != username}


def set_password(users: Mapping[str, User], username: str, password: str) -> dict[str, User]:
    """A copy of `users` with a new password for `username` (no longer a demo user)."""
    username = normalize_username(username)
    if username not in users:
        raise UsersError(f"No user {username!r}.")
    validate_password(password)
    updated = replace(users[username], password_hash=hash_password(password), demo=False)
    return {**users, username: updated}


def one_time_password() -> str:
    """A random initial password for a new user, shown once to the admin who adds them."""
    return secrets.token_urlsafe(15)  # 20 characters, about 120 bits


def add_user_with_one_time_password(
    users: Mapping[str, User], username: str, role: str, *, name: str | None = None
) -> tuple[dict[str, User], str]:
    """A copy of `users` with a new user whose random password must be changed at the first
    login, and that password (to hand over once; it is not stored anywhere in clear)."""
    password = one_time_password()
    updated = add_user(users, username, role, password, name=name)
    user = replace(updated[validate_username(username)], must_change_password=True)
    return {**updated, user.username: user}, password


def change_role(users: Mapping[str, User], username: str, role: str) -> dict[str, User]:
    username = normalize_username(username)
    if username not in users:
        raise UsersError(f"No user {username!r}.")
    if role not in ROLES:
        raise UsersError(f"Unknown role {role!r}: choose one of {', '.join(ROLES)}.")
    if users[username].role == role:
        raise UsersError(f"User {username!r} already has the role {role}.")
    return {**users, username: replace(users[username], role=role)}


def change_own_password(
    users: Mapping[str, User], username: str, current: str, new: str
) -> dict[str, User]:
    """A copy of `users` after `username` changed their own password (clears the one-time
    flag). The current password must be right and the new one different and valid."""
    username = normalize_username(username)
    user = users.get(username)
    if user is None or not check_password(current, user.password_hash):
        raise UsersError("The current password is not right.")
    if new == current:
        raise UsersError("Choose a password different from the current one.")
    validate_password(new)
    updated = replace(
        user, password_hash=hash_password(new), demo=False, must_change_password=False
    )
    return {**users, username: updated}


def with_demo_users(users: Mapping[str, User], *, rounds: int = BCRYPT_ROUNDS) -> dict[str, User]:
    """A copy of `users` with the demo users and their published passwords (demo mode only:
    the caller refuses production, and login refuses demo users in production)."""
    result = dict(users)
    for username, (role, password) in DEMO_USERS.items():
        current = result.get(username)
        if (
            current is not None
            and current.demo
            and current.role == role
            and check_password(password, current.password_hash)
        ):
            continue
        result[username] = User(
            username, username, role, hash_password(password, rounds=rounds), True
        )
    return result
