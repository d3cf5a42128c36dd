"""Engine and sessions. The caller owns the unit of work: core functions take a Session and
never commit; `session_scope()` commits once at the end or rolls back on error."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, Insert

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


# SQLite result codes (the primary code, the low byte of the extended one) that mean the
# database cannot take work now, whatever the statement: an outage to wait out, not a bug.
_SQLITE_UNAVAILABLE = {
    5,  # SQLITE_BUSY: "database is locked" (another process holds the write lock)
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY: the file or its folder became read-only
    10,  # SQLITE_IOERR: "disk I/O error"
    13,  # SQLITE_FULL: the disk is full
    14,  # SQLITE_CANTOPEN: "unable to open database file"
}
# PostgreSQL SQLSTATE classes and codes of the same kind: 08 connection exception,
# 53 insufficient resources (disk full, too many connections), 57P01-57P03 shutdown / starting.
_PG_UNAVAILABLE_CLASSES = ("08", "53")
_PG_UNAVAILABLE_CODES = {"57P01", "57P02", "57P03", "55P03"}
_UNAVAILABLE_MARKERS = (
    "connection refused",
    "could not connect",
    "unable to open database",
    "database is locked",
    "disk i/o error",
    "server closed the connection",
    "connection timeout",
    "timeout expired",
    "the connection is closed",
    "the database system is shutting down",
    "the database system is starting up",
    "terminating connection",
    "consuming input failed",
    "no connection to the server",
)


def is_unavailable(exc: DBAPIError) -> bool:
    """True when `exc` says the database cannot take work now (locked, a disk I/O error, a lost
    or refused connection, a server shutting down) rather than that a statement was wrong:
    the caller answers 503 and the work is retried later, unchanged."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _SQLITE_UNAVAILABLE:
        return True
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and (
        state[:2] in _PG_UNAVAILABLE_CLASSES or state in _PG_UNAVAILABLE_CODES
    ):
        return True
    text = str(orig).lower() if orig is not None else ""
    return any(marker in text for marker in _UNAVAILABLE_MARKERS)


def make_engine(url: str, *, sqlite_busy_timeout_ms: int | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`: SQLite gets WAL, a busy timeout and write transactions that take the
    write lock up front (BEGIN IMMEDIATE), so concurrent writers queue instead of deadlocking.

    `sqlite_busy_timeout_ms` (default SQLITE_BUSY_TIMEOUT_MS) is how long a statement waits
    for another process's lock before failing with "database is locked". A new database file
    and the folders made for it are owner-only (they hold emails, event bodies, session hashes);
    SQLite gives its -wal and -shm files the mode of the database file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            _create_owner_only(Path(database))
        busy_ms = sqlite_busy_timeout_ms
        if busy_ms is None:
            busy_ms = SQLITE_BUSY_TIMEOUT_MS
        engine = create_engine(
            url,
            connect_args={"timeout": busy_ms / 1000},
            json_serializer=_dump_json,
            **kwargs,
        )
        _configure_sqlite(engine, busy_ms)
        return engine
    kwargs.setdefault("json_serializer", _dump_json)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    # rowcount (insert-ignore, guarded updates) is -1 with psycopg 3.3 unless preserved.
    kwargs.setdefault("execution_options", {"preserve_rowcount": True})
    return create_engine(url, **kwargs)


def _create_owner_only(path: Path) -> None:
    """Make the missing folders of `path` (0700) and the file itself (0600) if it is missing;
    existing ones are left as they are."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
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
    then does nothing: unique keys, not application checks, make retries and races safe.
    Runs on the session's connection without an autoflush: a plain insert does not depend on
    pending ORM changes (and flushing them for every insert costs more than the insert)."""
    dialect = session.get_bind().dialect.name
    prepared = _insert_ignore_statement(model.__table__, dialect, tuple(index_elements or ()))
    return raw(session).rowcount(prepared, values) > 0


@functools.cache
def _insert_ignore_statement(table: Any, dialect: str, index_elements: tuple[str, ...]) -> Prepared:
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover
        raise RuntimeError(f"unsupported database {dialect}")
    insert_fn: Any = pg_insert if dialect == "postgresql" else sqlite_insert
    return Prepared(
        insert_fn(table).on_conflict_do_nothing(index_elements=list(index_elements) or None)
    )


# --- Prepared statements for the webhook hot path ----------------------------------------------
# SQLAlchemy spends tens of microseconds around every statement it executes (execution context,
# events, result set-up): on the webhook path that was most of the cost of an event, ten times
# what SQLite itself spent on the same statements. A `Prepared` statement is a Core statement
# compiled once per dialect, then run straight on the DB-API cursor of the session's
# connection, inside the session's transaction: the same SQL, the same type processing, the
# same error classes, without the per-execution machinery.


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # the statement's parameters in DB-API order
    positional: bool
    fixed: dict[str, Any]  # parameters whose value the statement carries itself
    defaults: tuple[tuple[str, Any, bool], ...]  # column defaults: (name, value, is callable)
    bind: tuple[tuple[str, Callable[[Any], Any]], ...]  # type conversions of parameters
    result: tuple[Callable[[Any], Any] | None, ...]  # type conversions of result columns


class Prepared:
    """A Core statement run on the DB-API cursor, compiled once per dialect and parameter set.

    Parameters are given by name as for `Connection.execute`; Python-side column defaults are
    applied like SQLAlchemy applies them; rows come back as tuples with the column types'
    result processing. For small, hot statements; anything else goes through the session."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}

    def plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        cached = self._plans.get((dialect.name, keys))
        if cached is None:
            cached = self._plans[(dialect.name, keys)] = self._compile(dialect, keys)
        return cached

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
        statement = self.statement
        if isinstance(statement, Insert):  # no implicit RETURNING of the new primary key
            statement = statement.inline()
        compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
        positional = compiled.positiontup is not None
        names = tuple(compiled.positiontup if positional else compiled.binds)
        binds = compiled.binds
        fixed = {
            name: binds[name].value for name in names if name in binds and not binds[name].required
        }
        defaults = []
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            default = column.default if compiled.isinsert else column.onupdate
            if default is None or not (default.is_scalar or default.is_callable):
                raise ValueError(f"{column.key}: only scalar and callable defaults can be prepared")
            defaults.append((column.key, default.arg, default.is_callable))
        bind = []
        for name in names:
            typ = binds[name].type if name in binds else None
            processor = (
                typ.dialect_impl(dialect).bind_processor(dialect) if typ is not None else None
            )
            if processor is not None:
                bind.append((name, processor))
        result: list[Callable[[Any], Any] | None] = []
        for column in getattr(self.statement, "exported_columns", ()):
            result.append(column.type.dialect_impl(dialect).result_processor(dialect, None))
        return _Plan(
            compiled.string, names, positional, fixed, tuple(defaults), tuple(bind), tuple(result)
        )


class Raw:
    """The DB-API cursor of a session's connection, for `Prepared` statements.

    Built once per unit of work on the hot path (`raw(session)`), valid while the session's
    transaction lasts. DB-API errors are raised as SQLAlchemy's (OperationalError,
    IntegrityError, ...) with the connection invalidated when the driver says it is gone, as
    `Connection.execute` would."""

    __slots__ = ("_error", "connection", "cursor", "dialect")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect
        self.cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._error: Any = self.dialect.loaded_dbapi.Error

    def execute(self, prepared: Prepared, params: dict[str, Any]) -> Any:
        """Run `prepared`; the DB-API cursor, for rowcount and rows (see `rows`)."""
        plan = prepared.plan(self.dialect, tuple(params))
        values = {**plan.fixed, **params}
        for name, value, is_callable in plan.defaults:
            values[name] = value(None) if is_callable else value
        for name, processor in plan.bind:
            values[name] = processor(values[name])
        args: Any = [values[name] for name in plan.names] if plan.positional else values
        return self._run(plan.sql, args)

    def _run(self, sql: str, args: Any = ()) -> Any:
        try:
            self.cursor.execute(sql, args)
        except self._error as exc:
            gone = self.dialect.is_disconnect(exc, self.connection.connection, self.cursor)
            if gone:
                self.connection.invalidate(exc)
            raise DBAPIError.instance(
                sql, None, exc, self._error, hide_parameters=True,
                connection_invalidated=gone, dialect=self.dialect,
            ) from exc  # fmt: skip
        return self.cursor

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """What the block writes is undone if it raises (and only that: the transaction goes on).

        Plain SAVEPOINT statements, cheaper than the session's `begin_nested`; the session does
        not see them, so ORM objects written inside the block must be flushed inside it (and
        code whose flush may fail must bring its own `begin_nested`: see
        core.webhook.fulfillment)."""
        self._run("SAVEPOINT hot_path")
        try:
            yield
        except BaseException:
            self._run("ROLLBACK TO SAVEPOINT hot_path")
            self._run("RELEASE SAVEPOINT hot_path")
            raise
        self._run("RELEASE SAVEPOINT hot_path")

    def rowcount(self, prepared: Prepared, params: dict[str, Any]) -> int:
        return int(self.execute(prepared, params).rowcount)

    def rows(self, prepared: Prepared, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The result rows of a SELECT (or RETURNING), converted by the column types."""
        cursor = self.execute(prepared, params)
        fetched = cursor.fetchall()
        processors = prepared.plan(self.dialect, tuple(params)).result
        if not any(processors):
            return [tuple(row) for row in fetched]
        return [
            tuple(p(v) if p is not None else v for p, v in zip(processors, row, strict=True))
            for row in fetched
        ]

    def first(self, prepared: Prepared, params: dict[str, Any]) -> tuple[Any, ...] | None:
        found = self.rows(prepared, params)
        return found[0] if found else None


_RAW = "core.db.raw"


def raw(session: Session) -> Raw:
    """The `Raw` cursor of `session`'s current unit of work (see `hot_path`), else a new one."""
    current = session.info.get(_RAW)
    return current if isinstance(current, Raw) else Raw(session.connection())


@contextmanager
def hot_path(session: Session) -> Iterator[Raw]:
    """One `Raw` cursor shared by everything `raw(session)` inside the block (one event).

    The session's pending ORM changes are flushed first: statements sent on the cursor would
    not see them otherwise."""
    session.flush()
    shared = Raw(session.connection())
    session.info[_RAW] = shared
    try:
        yield shared
    finally:
        session.info.pop(_RAW, None)
