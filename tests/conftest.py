"""Shared fixtures: databases (a fresh SQLite file or PostgreSQL database per test, both
migrated), settings from a clean environment, and a webhook secret."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core import migrate
from core.db import dispose_engines, make_engine
from core.settings import get_settings
from tests.support.postgres import PostgresServer
from tests.support.stripe_standin import FakeStripe

SECRET = "whsec_test_primary_0123456789abcdef"
OLD_SECRET = "whsec_test_previous_fedcba9876543210"
_db_names = itertools.count(1)

ENV_NAMES = (
    "DATABASE_URL",
    "APP_ENV",
    "STRIPE_SECRET_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRETS",
    "STRIPE_WEBHOOK_TOLERANCE",
    "AUTH_CONFIG",
    "COOKIE_KEY",
    "SESSION_HOURS",
    "BURST_WINDOW_MINUTES",
    "BURST_THRESHOLD",
    "SENTRY_DSN",
    "ALERT_WEBHOOK_URL",
    "RETENTION_DELIVERIES_DAYS",
    "RETENTION_REJECTION_SAMPLES_DAYS",
    "RETENTION_EVENT_BODIES_DAYS",
    "RECEIVER_HEADER_TIMEOUT",
    "RECEIVER_BODY_TIMEOUT",
    "RECEIVER_DB_TIMEOUT",
    "AUDIT_CHECKPOINT_KEY",
    "AUDIT_CHECKPOINT_PATH",
    "LOGIN_CLIENT_HEADER",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from the embedded defaults: no .env, no inherited variables."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    dispose_engines()
    yield
    get_settings.cache_clear()
    dispose_engines()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    # Outside any transaction (engine.connect() would BEGIN IMMEDIATE and lock the checkpoint).
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "payments.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_template(pg_server: PostgresServer) -> str:
    admin = make_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE payments_template"))
    admin.dispose()
    engine = make_engine(pg_server.url("payments_template"))
    migrate.upgrade(engine)
    engine.dispose()
    return "payments_template"


@contextmanager
def _pg_database(pg_server: PostgresServer, pg_template: str) -> Iterator[str]:
    name = f"payments_test_{next(_db_names)}"
    admin = make_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield pg_server.url(name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_server: PostgresServer, pg_template: str) -> Iterator[str]:
    with _pg_database(pg_server, pg_template) as url:
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, migrated database: the test runs once on SQLite, once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def other_engine(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A second fresh database of the same kind as `engine`'s, to compare two runs."""
    with ExitStack() as stack:
        if db_url.startswith("sqlite"):
            path = tmp_path / "other.db"
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
            url = f"sqlite:///{path}"
        else:
            url = stack.enter_context(
                _pg_database(
                    request.getfixturevalue("pg_server"), request.getfixturevalue("pg_template")
                )
            )
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """A Stripe-shaped API on 127.0.0.1 (tests/support/stripe_standin.py), stopped after."""
    server = FakeStripe.start()
    yield server
    server.stop()
