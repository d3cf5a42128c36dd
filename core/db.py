"""Engine and sessions. The caller owns the unit of work: core functions take a Session and
never commit; `session_scope()` commits once at the end or rolls back on error."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_MS = 10_000


class JSONText:
    """A JSON document already serialized, stored as it is (a verified webhook body: the bytes
    Stripe signed, and no second serialization on the hot path)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _dump_json(value: Any) -> str:
    return value.text if isinstance(value, JSONText) else json.dumps(value)


class DatabaseUnavailable(Exception):
    """The database could not be reached; the message is safe to show."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`: SQLite gets WAL, a busy timeout and write transactions that take the
    write lock up front (BEGIN IMMEDIATE), so concurrent writers queue instead of deadlocking."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_serializer=_dump_json,
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("json_serializer", _dump_json)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    # rowcount (insert-ignore, guarded updates) is -1 with psycopg 3.3 unless preserved.
    kwargs.setdefault("execution_options", {"preserve_rowcount": True})
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")  # statement journals off the disk
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _engine_for(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: DATABASE_URL), built on first use."""
    if url is None:
        from core.settings import get_settings

        url = get_settings().database_url
    return _engine_for(url)


def dispose_engines() -> None:
    """Close and forget every cached engine (tests; after a fork, build new engines instead)."""
    # Disposed, not just forgotten: pooled connections left to the garbage collector are a
    # ResourceWarning (psycopg) and hold PostgreSQL backends open until then.
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine | None = None, *, write: bool = True) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    Read-only scopes (`write=False`) start a deferred transaction on SQLite so dashboards never
    hold the write lock."""
    engine = engine or get_engine()
    bind = engine if write or not is_sqlite(engine) else _read_engine(engine)
    with Session(bind=bind, expire_on_commit=False) as session:
        try:
            yield session
            if write:
                session.commit()
            else:
                session.rollback()
        except BaseException:
            session.rollback()
            raise


def _read_engine(engine: Engine) -> Engine:
    return engine.execution_options(sqlite_begin="DEFERRED")


def insert_ignore(
    session: Session, model: Any, values: dict[str, Any], index_elements: list[str] | None = None
) -> bool:
    """INSERT unless a row with the same unique key (any, without `index_elements`) exists;
    True when this call inserted.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and
    then does nothing: unique keys, not application checks, make retries and races safe."""
    dialect = session.get_bind().dialect.name
    stmt = _insert_ignore_statement(model.__table__, dialect, tuple(index_elements or ()))
    # Values go in as parameters so the compiled statement is cached (the webhook hot path),
    # and on the session's connection without an autoflush: a plain insert does not depend on
    # pending ORM changes, and flushing them twice per event costs more than the insert.
    result: CursorResult[Any] = session.connection().execute(stmt, values)
    return bool(result.rowcount)


@functools.cache
def _insert_ignore_statement(table: Any, dialect: str, index_elements: tuple[str, ...]) -> Any:
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover
        raise RuntimeError(f"unsupported database {dialect}")
    insert_fn: Any = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert_fn(table).on_conflict_do_nothing(index_elements=list(index_elements) or None)
    # psycopg 3.3 resets cursor.rowcount when SQLAlchemy closes the cursor: without this,
    # rowcount is -1 on PostgreSQL and every duplicate looks inserted.
    return stmt.execution_options(preserve_rowcount=True)
