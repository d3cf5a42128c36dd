"""Migrations build exactly the models' schema, from an empty database, on both backends."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, text

from core import migrate
from core.db import make_engine
from core.models import Base, PaymentAttempt
from tests.support import rollup
from tests.support.postgres import PostgresServer
from tests.support.servers import base_env

_names = itertools.count(1)

# SQLite cannot reflect expression indexes (lower(email)); they are checked by name below.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Skipped unsupported reflection of expression-based index:sqlalchemy.exc.SAWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:autogenerate skipping metadata-specified expression-based index:UserWarning"
    ),
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no table at all (not the migrated template of conftest)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
        yield engine
        engine.dispose()
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"migrations_empty_{next(_names)}"
    admin = make_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(server.url(name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_upgrading_an_empty_database_gives_exactly_the_models_schema(
    empty_engine: Engine,
) -> None:
    assert inspect(empty_engine).get_table_names() == []
    migrate.upgrade(empty_engine)
    tables = set(inspect(empty_engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert differences(empty_engine) == []
    indexes = {
        index.name
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.name is not None
    }
    with empty_engine.connect() as conn:
        query = (
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if empty_engine.dialect.name == "sqlite"
            else "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        )
        assert indexes <= set(conn.execute(text(query)).scalars())
    # Upgrading again is a no-op.
    migrate.upgrade(empty_engine)
    assert differences(empty_engine) == []


def test_the_diff_is_not_blind(empty_engine: Engine) -> None:
    """The comparison above would notice a missing index or table."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_stripe_events_status"))
        conn.execute(text("DROP TABLE risk_flags"))
    found = {(diff[0], getattr(diff[1], "name", None)) for diff in differences(empty_engine)}  # type: ignore[index]
    assert ("add_table", "risk_flags") in found
    assert ("add_index", "ix_stripe_events_status") in found


def test_the_rollup_migration_backfills_and_goes_back(empty_engine: Engine) -> None:
    """0002 fills payment_attempt_hourly from the attempts already there; going back to 0001
    removes it and its triggers (attempts can still be written)."""
    migrate.upgrade(empty_engine, "0001")
    hour = datetime(2026, 3, 2, 10, tzinfo=UTC)
    rows = [
        {"id": f"ch_{n}", "created": hour + timedelta(minutes=25 * n), "amount": 100 * n,
         "currency": (None, "usd", "eur")[n % 3], "outcome": ("succeeded", "failed")[n % 2]}
        for n in range(12)
    ]  # fmt: skip
    with empty_engine.begin() as conn:
        conn.execute(insert(PaymentAttempt), rows)
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        got = rollup.actual(conn)
        assert got == rollup.expected(conn) and sum(v[0] for v in got.values()) == 12
    config = migrate.alembic_config(empty_engine)
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert "payment_attempt_hourly" not in inspect(empty_engine).get_table_names()
    with empty_engine.begin() as conn:
        conn.execute(insert(PaymentAttempt), [{**rows[0], "id": "ch_after"}])


def test_the_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    done = subprocess.run(
        [sys.executable, "-m", "core", "migrate"],
        env=base_env({"DATABASE_URL": url}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    engine = make_engine(url)
    try:
        assert differences(engine) == []
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        engine.dispose()
