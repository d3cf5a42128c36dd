"""Permissions, lockout and sessions in core.auth, against SQLite and PostgreSQL.

"Restart" means what it does in production: a new engine (new connections, no memory of the
old process) on the same database."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from core.__main__ import main as cli
from core.auth import audit, permissions, sessions
from core.auth.permissions import Actor, PermissionDenied
from core.auth.sessions import (
    BAD_CREDENTIALS,
    CLIENT_FREE_FAILURES,
    FAILURE_MEMORY,
    LOCKED_OUT,
    MAX_DELAY,
    USER_CEILING,
    LoginResult,
    client_delay,
    wait_message,
)
from core.auth.users import User, hash_password
from core.db import make_engine, session_scope
from core.models import AuditEntry, LoginAttempt, UserSession
from core.settings import get_settings

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
WRONG = "wrong password guess"
OFFICE = "198.51.100.10"  # where alice and bob work from
ATTACKER = "203.0.113.66"
USERS = {
    "alice": User("alice", "Alice", "finance", hash_password(PASSWORD, rounds=4)),
    "bob": User("bob", "Bob", "support", hash_password(PASSWORD, rounds=4)),
    "demo": User("demo", "demo", "admin", hash_password("admin-demo", rounds=4), demo=True),
}


def attempt(
    engine: Engine,
    username: str,
    password: str,
    at: datetime,
    *,
    users: dict[str, User] = USERS,
    production: bool = False,
    client: str | None = OFFICE,
) -> LoginResult:
    with session_scope(engine) as session:
        return sessions.login(
            session,
            users,
            username,
            password,
            session_hours=8,
            production=production,
            now=at,
            client=client,
        )


def resume(engine: Engine, token: str | None, at: datetime, **kwargs: object) -> Actor | None:
    with session_scope(engine) as session:
        return sessions.resume(session, token, now=at, **kwargs)  # type: ignore[arg-type]


def actions(engine: Engine) -> list[str]:
    with session_scope(engine, write=False) as session:
        return list(session.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars())


# --- Permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "permission", "expected"),
    [
        ("support", "orders.view", True),
        ("support", "emails.view_full", True),
        ("support", "metrics.view", False),
        ("support", "fulfillment.request", True),
        ("support", "fulfillment.approve", False),
        ("support", "audit.view", False),
        ("finance", "metrics.view", True),
        ("finance", "risk.review", True),
        ("finance", "emails.view_full", False),
        ("finance", "fulfillment.request", False),
        ("finance", "promotions.manage", False),
        ("admin", "audit.view", True),
        ("admin", "events.replay", True),
        ("admin", "fulfillment.approve", True),
        (None, "orders.view", False),
    ],
)
def test_permissions_follow_the_design_table(
    role: permissions.Role | None, permission: str, expected: bool
) -> None:
    assert permissions.allowed(role, permission) is expected
    actor = Actor("someone", role)
    if expected:
        permissions.require(actor, permission)
    else:
        with pytest.raises(PermissionDenied):
            permissions.require(actor, permission)


def test_unknown_permission_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        permissions.allowed("admin", "orders.delete")


# --- Lockout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["alice", "nobody-here"])
def test_a_clients_failures_make_it_wait_longer_and_longer_across_a_restart(
    db_url: str, username: str
) -> None:
    engine = make_engine(db_url)
    results = [attempt(engine, username, WRONG, T0) for _ in range(CLIENT_FREE_FAILURES)]
    assert [r.message for r in results] == [BAD_CREDENTIALS] * 2 + [wait_message(client_delay(3))]
    engine.dispose()

    restarted = make_engine(db_url)
    # The right password while the client must wait is refused, without saying it was right.
    during = attempt(restarted, username, PASSWORD, T0 + timedelta(seconds=10))
    assert (during.ok, during.message, during.locked) == (
        False,
        wait_message(timedelta(seconds=5)),
        True,
    )
    assert during.token is None
    # Refused attempts do not extend the wait; each further failure doubles it, up to a cap.
    at = T0 + client_delay(3)
    fourth = attempt(restarted, username, WRONG, at + timedelta(seconds=1))
    assert fourth.message == wait_message(client_delay(4)) == wait_message(timedelta(seconds=30))
    assert client_delay(5) == 2 * client_delay(4) and client_delay(40) == MAX_DELAY
    after = attempt(restarted, username, PASSWORD, at + client_delay(4) + timedelta(seconds=2))
    if username in USERS:
        assert after.ok and after.actor == Actor("alice", "finance")
    else:
        assert (after.ok, after.message) == (False, wait_message(client_delay(5)))
    restarted.dispose()


@pytest.mark.parametrize("victim", ["alice", "admin-root"])
def test_failures_from_elsewhere_do_not_lock_the_user_out(db_url: str, victim: str) -> None:
    """Finding 6: five wrong passwords locked any username, admin included, for 15 minutes,
    from anywhere, and only waiting undid it."""
    users = {
        **USERS,
        "admin-root": User("admin-root", "Root", "admin", USERS["alice"].password_hash),
    }
    engine = make_engine(db_url)
    for _ in range(5):
        attempt(engine, victim, WRONG, T0, users=users, client=ATTACKER)
    ok = attempt(engine, victim, PASSWORD, T0 + timedelta(seconds=1), users=users, client=OFFICE)
    assert ok.ok, ok.message
    assert attempt(
        engine, victim, PASSWORD, T0 + timedelta(seconds=2), users=users, client=ATTACKER
    ).locked
    engine.dispose()


def test_the_ceiling_stops_a_distributed_guess_but_not_known_clients_and_unlock_ends_it(
    sqlite_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding 6: `python -m core users unlock <name>` undoes a lock without waiting."""
    assert attempt(sqlite_engine, "alice", PASSWORD, T0 - timedelta(days=2)).ok  # from OFFICE
    for n in range(USER_CEILING):  # many clients, two guesses each
        attempt(sqlite_engine, "alice", WRONG, T0 + timedelta(seconds=n), client=f"10.0.{n // 2}.1")
    later = T0 + timedelta(minutes=5)
    assert (
        attempt(sqlite_engine, "alice", PASSWORD, later, client="192.0.2.200").message == LOCKED_OUT
    )
    assert attempt(sqlite_engine, "alice", PASSWORD, later, client=OFFICE).ok  # a known client
    with session_scope(sqlite_engine, write=False) as session:
        state = sessions.lock_state(session, "alice", later)
    assert state.locked and state.failures == USER_CEILING and state.last_login == later

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    assert cli(["users", "unlock", "ALICE"]) == 0
    assert "cleared 50 failed login(s)" in capsys.readouterr().out
    assert attempt(sqlite_engine, "alice", PASSWORD, later, client="192.0.2.200").ok
    assert "login.unlocked" in actions(sqlite_engine)
    # The ceiling also ends by itself once the failures are older than the memory.
    for n in range(USER_CEILING):
        attempt(sqlite_engine, "bob", WRONG, T0 + timedelta(seconds=n), client=f"10.1.{n // 2}.1")
    assert attempt(sqlite_engine, "bob", PASSWORD, later, client="192.0.2.9").locked
    assert attempt(
        sqlite_engine,
        "bob",
        PASSWORD,
        T0 + FAILURE_MEMORY + timedelta(minutes=1),
        client="192.0.2.9",
    ).ok


def test_unknown_and_known_usernames_get_the_same_answers(sqlite_engine: Engine) -> None:
    def messages(username: str) -> list[str | None]:
        return [
            attempt(sqlite_engine, username, WRONG, T0 + timedelta(minutes=i)).message
            for i in range(CLIENT_FREE_FAILURES + 3)
        ]

    assert messages("alice") == messages("nobody")


def test_usernames_are_compared_case_insensitively_for_lockout(sqlite_engine: Engine) -> None:
    for spelling in ["alice", "ALICE", " Alice"]:
        attempt(sqlite_engine, spelling, WRONG, T0)
    assert attempt(sqlite_engine, "aLiCe ", PASSWORD, T0 + timedelta(seconds=1)).locked


def test_failures_older_than_the_memory_do_not_count(sqlite_engine: Engine) -> None:
    for _ in range(CLIENT_FREE_FAILURES):
        attempt(sqlite_engine, "alice", WRONG, T0)
    later = T0 + FAILURE_MEMORY + timedelta(seconds=10)
    assert attempt(sqlite_engine, "alice", WRONG, later).message == BAD_CREDENTIALS
    assert attempt(sqlite_engine, "alice", PASSWORD, later + timedelta(seconds=1)).ok


def test_a_success_resets_its_clients_count(sqlite_engine: Engine) -> None:
    for _ in range(CLIENT_FREE_FAILURES - 1):
        attempt(sqlite_engine, "alice", WRONG, T0)
    assert attempt(sqlite_engine, "alice", PASSWORD, T0 + timedelta(seconds=1)).ok
    assert (
        attempt(sqlite_engine, "alice", WRONG, T0 + timedelta(seconds=2)).message == BAD_CREDENTIALS
    )


def test_lockout_is_per_username(sqlite_engine: Engine) -> None:
    for _ in range(CLIENT_FREE_FAILURES):
        attempt(sqlite_engine, "alice", WRONG, T0)
    assert attempt(sqlite_engine, "bob", PASSWORD, T0 + timedelta(seconds=1)).ok
    assert attempt(sqlite_engine, "alice", PASSWORD, T0 + timedelta(seconds=1)).locked


def test_concurrent_guesses_cannot_exceed_the_limit(db_url: str) -> None:
    engine = make_engine(db_url)
    barrier = threading.Barrier(8)
    results: list[LoginResult] = []

    def guess() -> None:
        barrier.wait()
        results.append(attempt(engine, "alice", WRONG, T0))

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope(engine, write=False) as session:
        counted = session.execute(select(func.count()).select_from(LoginAttempt)).scalar_one()
    assert counted == CLIENT_FREE_FAILURES
    assert sum(r.message == BAD_CREDENTIALS for r in results) == CLIENT_FREE_FAILURES - 1
    engine.dispose()


@pytest.mark.parametrize(
    ("username", "password"), [("", PASSWORD), ("alice", ""), ("   ", "x" * 20)]
)
def test_empty_credentials_are_not_counted(
    sqlite_engine: Engine, username: str, password: str
) -> None:
    result = attempt(sqlite_engine, username, password, T0)
    assert (result.ok, result.message) == (False, sessions.EMPTY_CREDENTIALS)
    assert actions(sqlite_engine) == []


def test_over_long_passwords_fail_cleanly(sqlite_engine: Engine) -> None:
    # bcrypt refuses more than 72 bytes; that must be a failed login, not an exception.
    assert attempt(sqlite_engine, "alice", PASSWORD + "é" * 80, T0).message == BAD_CREDENTIALS


def test_production_refuses_demo_users(sqlite_engine: Engine) -> None:
    refused = attempt(sqlite_engine, "demo", "admin-demo", T0, production=True)
    assert (refused.ok, refused.message) == (False, BAD_CREDENTIALS)
    assert attempt(sqlite_engine, "demo", "admin-demo", T0 + timedelta(seconds=1)).ok


def test_every_login_outcome_is_audited_in_an_intact_chain(db_url: str) -> None:
    engine = make_engine(db_url)
    for _ in range(CLIENT_FREE_FAILURES):
        attempt(engine, "alice", WRONG, T0)
    attempt(engine, "alice", PASSWORD, T0 + timedelta(seconds=1))
    ok = attempt(engine, "bob", PASSWORD, T0 + timedelta(minutes=2))
    with session_scope(engine) as session:
        sessions.logout(session, ok.token, now=T0 + timedelta(minutes=3))
    assert actions(engine) == [
        *["login.failed"] * CLIENT_FREE_FAILURES,
        "login.refused_locked",
        "login.succeeded",
        "logout",
    ]
    with session_scope(engine, write=False) as session:
        assert audit.verify(session).ok
        rows = session.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars().all()
        assert {row.target for row in rows} == {"alice", "bob"}
        assert all(PASSWORD not in str(row.details) for row in rows)
    engine.dispose()


# --- Sessions ------------------------------------------------------------------------------------


def test_only_a_keyed_hash_of_the_token_is_stored(sqlite_engine: Engine) -> None:
    result = attempt(sqlite_engine, "alice", PASSWORD, T0)
    assert result.token and len(result.token) >= 40
    key = get_settings().cookie_key.get_secret_value().encode()
    with session_scope(sqlite_engine, write=False) as session:
        row = session.execute(select(UserSession)).scalar_one()
        assert row.token_hash == hmac.new(key, result.token.encode(), hashlib.sha256).hexdigest()
        assert row.token_hash != hashlib.sha256(result.token.encode()).hexdigest()
        assert row.expires_at == T0 + timedelta(hours=8)
    assert result.token not in repr(result)


def test_rotating_the_cookie_key_ends_every_session(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = attempt(sqlite_engine, "alice", PASSWORD, T0).token
    assert resume(sqlite_engine, token, T0 + timedelta(minutes=1)) == Actor("alice", "finance")
    monkeypatch.setenv("COOKIE_KEY", "a-brand-new-cookie-key-of-more-than-32-characters")
    get_settings.cache_clear()
    assert resume(sqlite_engine, token, T0 + timedelta(minutes=2)) is None


def test_a_session_survives_a_restart_until_it_expires(db_url: str) -> None:
    engine = make_engine(db_url)
    token = attempt(engine, "alice", PASSWORD, T0).token
    engine.dispose()

    restarted = make_engine(db_url)
    almost = T0 + timedelta(hours=8) - timedelta(seconds=1)
    assert resume(restarted, token, almost) == Actor("alice", "finance")
    assert resume(restarted, token, T0 + timedelta(hours=8)) is None
    # Expired stays expired, even if a clock later reads earlier.
    assert resume(restarted, token, T0 + timedelta(hours=1)) is None
    assert actions(restarted)[-1] == "session.expired"
    restarted.dispose()


@pytest.mark.parametrize("ending", ["logout", "revoke"])
def test_ending_a_session_refuses_a_copied_token_after_a_restart(db_url: str, ending: str) -> None:
    engine = make_engine(db_url)
    token = attempt(engine, "alice", PASSWORD, T0).token
    copied = str(token)  # what someone who copied the browser's credential would hold
    other = attempt(engine, "bob", PASSWORD, T0).token
    with session_scope(engine) as session:
        if ending == "logout":
            assert sessions.logout(session, token, now=T0 + timedelta(minutes=5))
        else:
            admin = Actor("root", "admin")
            ended = sessions.revoke_sessions(
                session, "alice", by=admin, reason="revoked", now=T0 + timedelta(minutes=5)
            )
            assert ended == 1
    engine.dispose()

    restarted = make_engine(db_url)
    assert resume(restarted, copied, T0 + timedelta(minutes=6)) is None
    assert resume(restarted, other, T0 + timedelta(minutes=6)) == Actor("bob", "support")
    restarted.dispose()


@pytest.mark.parametrize(
    "users",
    [
        {k: v for k, v in USERS.items() if k != "alice"},  # removed from the users file
        {**USERS, "alice": User("alice", "Alice", "support", USERS["alice"].password_hash)},
    ],
    ids=["removed", "role-changed"],
)
def test_a_removed_user_or_changed_role_ends_the_session(
    sqlite_engine: Engine, users: dict[str, User]
) -> None:
    token = attempt(sqlite_engine, "alice", PASSWORD, T0).token
    assert resume(sqlite_engine, token, T0, users=USERS) == Actor("alice", "finance")
    assert resume(sqlite_engine, token, T0, users=users) is None
    assert resume(sqlite_engine, token, T0, users=USERS) is None  # and it stays ended


@pytest.mark.parametrize("token", [None, "", "not-a-token", "x" * 500])
def test_unknown_tokens_resume_nothing(sqlite_engine: Engine, token: str | None) -> None:
    assert resume(sqlite_engine, token, T0) is None


def test_each_login_gets_its_own_session(sqlite_engine: Engine) -> None:
    first = attempt(sqlite_engine, "alice", PASSWORD, T0).token
    second = attempt(sqlite_engine, "alice", PASSWORD, T0).token
    assert first != second
    with session_scope(sqlite_engine) as session:
        sessions.logout(session, first, now=T0)
    assert resume(sqlite_engine, first, T0) is None
    assert resume(sqlite_engine, second, T0) == Actor("alice", "finance")


def test_mask_email() -> None:
    assert permissions.mask_email("jane.doe@example.com") == "j***@example.com"
    assert permissions.mask_email(None) is None
    assert permissions.mask_email("not-an-email") == "not-an-email"


def test_a_read_only_check_asks_for_a_write_only_when_something_changes(
    sqlite_engine: Engine,
) -> None:
    token = attempt(sqlite_engine, "alice", PASSWORD, T0).token

    def peek(at: datetime, users: dict[str, User] = USERS) -> Actor | None:
        with session_scope(sqlite_engine, write=False) as session:
            return sessions.resume(session, token, users=users, now=at, write=False)

    assert peek(T0 + timedelta(seconds=30)) == Actor("alice", "finance")
    for at, users in (
        (T0 + timedelta(minutes=2), USERS),  # last_seen_at to refresh
        (T0 + timedelta(hours=9), USERS),  # expired, to be marked
        (T0, {}),  # user removed, to be revoked
    ):
        with pytest.raises(sessions.NeedsWrite):
            peek(at, users)
    assert actions(sqlite_engine) == ["login.succeeded"]  # the reads changed nothing
    assert resume(sqlite_engine, token, T0 + timedelta(minutes=2)) == Actor("alice", "finance")
    assert peek(T0 + timedelta(minutes=2, seconds=30)) == Actor("alice", "finance")


def test_typed_usernames_are_stored_printable(sqlite_engine: Engine) -> None:
    attempt(sqlite_engine, "evil\x1b[31m\nname", WRONG, T0)
    with session_scope(sqlite_engine, write=False) as session:
        stored = session.execute(select(LoginAttempt.username)).scalar_one()
        audited = session.execute(select(AuditEntry.actor)).scalar_one()
    assert stored == audited == "evil?[31m?name"


def test_unknown_usernames_pay_for_a_real_bcrypt_check() -> None:
    # A malformed stand-in hash would fail instantly and tell who exists by timing.
    import bcrypt

    from core.auth.users import BCRYPT_ROUNDS

    assert sessions._DUMMY_HASH.startswith(f"$2b${BCRYPT_ROUNDS:02d}$")
    assert bcrypt.checkpw(b"any password", sessions._DUMMY_HASH.encode()) is False
