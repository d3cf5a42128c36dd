"""The users file (AUTH_CONFIG) and `python -m core users ...`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from core.__main__ import main as cli
from core.auth import audit, permissions, sessions
from core.auth.users import (
    DEMO_USERS,
    User,
    UsersError,
    check_password,
    hash_password,
    load_users,
    save_users,
    validate_password,
    validate_username,
    with_demo_users,
)
from core.db import session_scope
from core.models import AuditEntry
from tests.support.apptest import reset_caches

ROOT = Path(__file__).resolve().parents[2]
GOOD_PASSWORD = "a long enough password"


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    yield
    reset_caches()


@pytest.fixture
def users_file(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "users.yaml"
    monkeypatch.setenv("AUTH_CONFIG", str(path))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    return path


def answers(monkeypatch: pytest.MonkeyPatch, *replies: str) -> list[str]:
    """Feed getpass (the terminal prompt) these replies; returns the prompts it showed."""
    queue = list(replies)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return prompts


# --- Rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 12"),
        ("eleven char", "at least 12"),
        ("é" * 37, "72 bytes"),
        (" padded password ", "spaces"),
        ("finance-demo", "demo password"),
    ],
)
def test_weak_passwords_are_refused(password: str, problem: str) -> None:
    with pytest.raises(UsersError, match=problem):
        validate_password(password)


def test_twelve_characters_are_enough() -> None:
    validate_password("x" * 12)


@pytest.mark.parametrize(
    ("raw", "expected"), [("Alice", "alice"), (" bob.smith ", "bob.smith"), ("a-1_b", "a-1_b")]
)
def test_usernames_are_normalised(raw: str, expected: str) -> None:
    assert validate_username(raw) == expected


@pytest.mark.parametrize("raw", ["", "-lead", "has space", "x" * 65, "semi;colon", "ünï"])
def test_bad_usernames_are_refused(raw: str) -> None:
    with pytest.raises(UsersError):
        validate_username(raw)


def test_hashes_are_bcrypt_and_salted() -> None:
    first, second = hash_password(GOOD_PASSWORD, rounds=4), hash_password(GOOD_PASSWORD, rounds=4)
    assert first.startswith("$2b$04$") and first != second
    assert check_password(GOOD_PASSWORD, first) and check_password(GOOD_PASSWORD, second)
    assert not check_password(GOOD_PASSWORD + "!", first)
    assert not check_password(GOOD_PASSWORD, "not-a-hash")


# --- The file ------------------------------------------------------------------------------------


def test_file_round_trips_owner_only_without_plain_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    users = with_demo_users({}, rounds=4)
    save_users(path, users)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert all(password not in text for _, password in DEMO_USERS.values())
    assert load_users(path) == users
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_missing_file_means_no_users(tmp_path: Path) -> None:
    assert load_users(tmp_path / "absent.yaml") == {}


@pytest.mark.parametrize(
    "body",
    [
        "credentials: [unclosed",
        "credentials:\n  usernames:\n    a:\n      password: $2b$04$x\n      roles: [boss]\n",
        "credentials:\n  usernames:\n    a:\n      password: $2b$04$x\n"
        "      roles: [admin, support]\n",
        "credentials:\n  usernames:\n    a:\n      password: plain-text-password\n"
        "      roles: [admin]\n",
        "credentials:\n  usernames: [a, b]\n",
        "credentials:\n  usernames:\n    '**bold**':\n      password: $2b$04$x\n"
        "      roles: [admin]\n",
    ],
    ids=["yaml", "unknown-role", "two-roles", "plain-password", "not-a-mapping", "bad-name"],
)
def test_invalid_files_are_refused_with_a_clear_message(tmp_path: Path, body: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(body)
    with pytest.raises(UsersError, match=str(path)):
        load_users(path)


def test_the_file_is_readable_by_streamlit_authenticator(tmp_path: Path) -> None:
    # Same credentials layout and hash format as the login library expects.
    from streamlit_authenticator.utilities.hasher import Hasher

    path = tmp_path / "users.yaml"
    save_users(path, with_demo_users({}, rounds=4))
    import yaml

    credentials = yaml.safe_load(path.read_text())["credentials"]
    admin = credentials["usernames"]["admin"]
    assert admin["roles"] == ["admin"]
    assert Hasher.check_pw("admin-demo", admin["password"])


# --- The command ---------------------------------------------------------------------------------


def test_add_prompts_twice_and_the_user_can_log_in(
    users_file: Path, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = answers(monkeypatch, GOOD_PASSWORD, GOOD_PASSWORD)
    assert cli(["users", "add", "Carol", "--role", "finance"]) == 0
    assert len(prompts) == 2
    carol = load_users(users_file)["carol"]
    assert (carol.role, carol.demo) == ("finance", False)
    with session_scope(sqlite_engine) as session:
        result = sessions.login(
            session, load_users(users_file), "carol", GOOD_PASSWORD, session_hours=8
        )
    assert result.ok and result.actor == permissions.Actor("carol", "finance")


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ((GOOD_PASSWORD, GOOD_PASSWORD + "x"), "differ"),
        (("short", "short"), "at least 12"),
    ],
)
def test_add_refuses_bad_passwords_and_changes_nothing(
    users_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    replies: tuple[str, str],
    message: str,
) -> None:
    answers(monkeypatch, *replies)
    assert cli(["users", "add", "carol", "--role", "admin"]) == 1
    assert message in capsys.readouterr().err
    assert not users_file.exists()


def test_passwords_are_never_taken_from_the_command_line(users_file: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["users", "add", "carol", "--role", "admin", "--password", GOOD_PASSWORD])
    assert exit_info.value.code == 2


def test_add_refuses_a_duplicate(
    users_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers(monkeypatch, *[GOOD_PASSWORD] * 4)
    assert cli(["users", "add", "carol", "--role", "admin"]) == 0
    assert cli(["users", "add", "CAROL", "--role", "support"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert load_users(users_file)["carol"].role == "admin"


def test_remove_reset_and_revoke_are_audited_and_end_sessions(
    users_file: Path, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_users(users_file, with_demo_users({}, rounds=4))

    def open_session(username: str) -> str | None:
        with session_scope(sqlite_engine) as session:
            users = load_users(users_file)
            return sessions.login(
                session, users, username, DEMO_USERS[username][1], session_hours=8
            ).token

    def live(token: str | None) -> bool:
        with session_scope(sqlite_engine) as session:
            return sessions.resume(session, token) is not None

    tokens = {name: open_session(name) for name in DEMO_USERS}
    answers(monkeypatch, GOOD_PASSWORD, GOOD_PASSWORD)
    assert cli(["users", "reset-password", "support"]) == 0
    assert cli(["users", "revoke", "finance"]) == 0
    assert cli(["users", "remove", "admin"]) == 0
    assert not any(live(token) for token in tokens.values())
    users = load_users(users_file)
    assert set(users) == {"finance", "support"}
    assert check_password(GOOD_PASSWORD, users["support"].password_hash)
    assert not users["support"].demo

    with session_scope(sqlite_engine, write=False) as session:
        rows = session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars().all()
        trail = [(r.action, r.target, r.details.get("sessions_ended")) for r in rows]
        assert audit.verify(session).ok
    assert trail[-6:] == [
        ("session.revoked", "support", None),
        ("user.password_reset", "support", 1),
        ("session.revoked", "finance", None),
        ("sessions.revoke", "finance", 1),
        ("session.revoked", "admin", None),
        ("user.removed", "admin", 1),
    ]


@pytest.mark.parametrize("action", ["remove", "reset-password", "revoke"])
def test_unknown_users_are_reported(
    users_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    answers(monkeypatch, GOOD_PASSWORD, GOOD_PASSWORD)
    assert cli(["users", action, "nobody"]) == 1
    assert "No user 'nobody'" in capsys.readouterr().err


def test_demo_users_are_idempotent_and_refused_in_production(
    users_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["users", "demo"]) == 0
    first = load_users(users_file)
    assert {u.username: (u.role, u.demo) for u in first.values()} == {
        "admin": ("admin", True),
        "finance": ("finance", True),
        "support": ("support", True),
    }
    assert cli(["users", "demo"]) == 0
    assert load_users(users_file) == first  # unchanged: no needless rehash

    users_file.unlink()
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRETS", "whsec_" + "k3y" * 12)
    monkeypatch.setenv("COOKIE_KEY", "c" * 48)
    monkeypatch.setenv("AUDIT_CHECKPOINT_KEY", "a" * 48)
    reset_caches()
    capsys.readouterr()
    assert cli(["users", "demo"]) == 1
    assert "refused when APP_ENV=production" in capsys.readouterr().err
    assert not users_file.exists()


def test_list_shows_roles_and_live_sessions(
    users_file: Path,
    sqlite_engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    users = with_demo_users({}, rounds=4)
    users["zed"] = User("zed", "Zed", "support", hash_password(GOOD_PASSWORD, rounds=4))
    save_users(users_file, users)
    with session_scope(sqlite_engine) as session:
        sessions.login(session, users, "zed", GOOD_PASSWORD, session_hours=8)
    assert cli(["users", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["admin", "admin"],
        ["finance", "finance"],
        ["support", "support"],
        ["zed", "support"],
    ]
    assert lines[3].endswith("live sessions: 1")
    assert lines[0].endswith("live sessions: 0 (demo)")


def test_the_real_command_line(users_file: Path, tmp_path: Path) -> None:
    env = {**os.environ}
    run = subprocess.run(
        [sys.executable, "-m", "core", "users", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert set(load_users(users_file)) == set(DEMO_USERS)
