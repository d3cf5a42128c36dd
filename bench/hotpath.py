"""Where a webhook event's time goes on SQLite, in-process (no HTTP): verification alone, the
whole path (`core.webhook.receive.receive_many`, groups as the receiver makes them under load), and
the SQLite statements of that same run replayed on a bare sqlite3 connection (what the schema
itself costs: every row and index the path writes, and the commits). What is left is Python
around the statements. Set beside the floor's server CPU per event (the receiver benchmark),
it shows how much of the receiver's cost any code could remove.

    python -m bench hotpath      (BENCH_HOTPATH_EVENTS, BENCH_HOTPATH_GROUP)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core.db
from bench.common import write_section
from bench.receiver import SECRET, event_bodies
from core import migrate
from core.db import make_engine
from core.runtime import webhook_context
from core.settings import Settings
from core.webhook import receive, signature

COMMAND = "python -m bench hotpath"
_COMMIT = "COMMIT"


def _cpu_ms_per_event(seconds: float, events: int) -> float:
    return seconds * 1000 / events


def main() -> None:
    events = int(os.environ.get("BENCH_HOTPATH_EVENTS", "12000"))
    group = int(os.environ.get("BENCH_HOTPATH_GROUP", "32"))
    warm = 500
    bodies = event_bodies(warm + events)
    now = int(time.time())
    deliveries = [receive.Delivery(b, signature.sign(b, SECRET, now), "127.0.0.1") for b in bodies]

    started = time.process_time()
    for d in deliveries[warm:]:
        signature.verify(d.payload, d.header, [SECRET], 300)
    verify_ms = _cpu_ms_per_event(time.process_time() - started, events)

    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
        fresh = Path(tmp) / "fresh.db"
        engine = make_engine(f"sqlite:///{fresh}")
        migrate.upgrade(engine)
        engine.dispose()
        databases = {name: Path(tmp) / f"{name}.db" for name in ("timed", "captured", "replayed")}
        for path in databases.values():
            shutil.copy(fresh, path)

        warm_up = [deliveries[i : min(i + group, warm)] for i in range(0, warm, group)]
        measured = [deliveries[i : i + group] for i in range(warm, warm + events, group)]

        def run(path: Path, after_group: Callable[[], None]) -> float:
            """Warm up, then the measured groups; the CPU time they took."""
            url = f"sqlite:///{path}"
            engine = make_engine(url)
            ctx = webhook_context(Settings(_env_file=None, database_url=url))
            spent = 0.0
            for n, batch in enumerate(warm_up + measured):
                started = time.process_time()
                outcomes = receive.receive_many(
                    engine, batch, secrets=[SECRET], tolerance=300, ctx=ctx
                )
                if n >= len(warm_up):
                    spent += time.process_time() - started
                if any(o.result != "processed" for o in outcomes):
                    raise SystemExit(f"unexpected answers: {[o.result for o in outcomes]}")
                after_group()
            engine.dispose()
            return spent

        path_ms = _cpu_ms_per_event(run(databases["timed"], lambda: None), events)

        # The same run again, its statements captured (not timed: capturing costs too).
        captured: list[tuple[str, Any]] = []
        original = core.db.Raw._run

        def capture(self: core.db.Raw, sql: str, args: Any = ()) -> Any:
            captured.append((sql, args))
            return original(self, sql, args)

        core.db.Raw._run = capture  # type: ignore[method-assign]
        try:
            run(databases["captured"], lambda: captured.append((_COMMIT, None)))
        finally:
            core.db.Raw._run = original  # type: ignore[method-assign]
        commits = [i for i, (sql, _) in enumerate(captured) if sql == _COMMIT]
        replay_from = commits[len(warm_up) - 1] + 1  # after the warm-up's last group
        replayed = databases["replayed"]
        conn = sqlite3.connect(replayed, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                       "temp_store=MEMORY"):  # fmt: skip
            conn.execute(f"PRAGMA {pragma}")  # as core.db configures every connection
        cursor = conn.cursor()

        def replay(statements: list[tuple[str, Any]]) -> float:
            started = time.process_time()
            cursor.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                if sql == _COMMIT:
                    cursor.execute("COMMIT")
                    cursor.execute("BEGIN IMMEDIATE")
                else:
                    cursor.execute(sql, args)
            cursor.execute("COMMIT")
            return time.process_time() - started

        replay(captured[:replay_from])
        sqlite_ms = _cpu_ms_per_event(replay(captured[replay_from:]), events)
        conn.close()

    kinds = Counter(sql.split()[0] for sql, _ in captured[replay_from:] if sql != _COMMIT)
    statements = sum(kinds.values()) / events
    python_ms = path_ms - verify_ms - sqlite_ms
    body = f"""
{events:,} unique signed events (the receiver benchmark's mix), SQLite file in a fresh migrated
database, groups of {group} deliveries per `receive_many` call (one commit each), after a
warm-up of {warm}. CPU time of this one process, per event. The replay runs the same
{statements:.1f} statements per event ({", ".join(f"{n / events:.1f} {k}" for k, n in kinds.most_common())}) with the
same parameters and commits on a bare sqlite3 connection with core.db's PRAGMAs.

| part of one event | CPU per event |
| --- | ---: |
| verification: signature, timestamp, UTF-8, JSON, shape (`core.webhook.signature.verify`) | {verify_ms:.3f} ms |
| the whole path in-process (`core.webhook.receive.receive_many`) | {path_ms:.3f} ms |
| its SQLite statements and commits, replayed on bare sqlite3 | {sqlite_ms:.3f} ms |
| Python around the statements (handlers, savepoints, type conversion, bookkeeping) | {python_ms:.3f} ms |

The receiver adds HTTP (uvicorn, Starlette, the group writer) to the whole path; the floor
is HTTP, verification and one one-column insert. At least half the floor's rate means at most
twice its server CPU per event (see the receiver section): the SQLite work and verification
above are spent whatever code runs around them.
"""  # noqa: E501
    print(body)
    write_section("hotpath", "Webhook hot path: where an event's time goes", COMMAND, body)
