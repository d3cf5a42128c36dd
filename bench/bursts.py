"""Burst detection benchmark: batch detection over 1,000,000 payment attempts (all five entity
kinds) on SQLite and on PostgreSQL, against a plain pandas rolling-window baseline over the same
rows in the same run, and the added cost per attempt of incremental detection on the webhook path.

    python -m bench bursts        (BENCH_BURSTS_ATTEMPTS=100000 for a quick trial)

Data: 30 days of attempts, 15 % declined, over realistic pools (200k cards, 150k customers and
emails, 100k IPs, 40 promotion codes on a fifth of attempts), plus injected attacks: card
testing from a few IPs and bursts on stolen cards. Each database is freshly migrated, and the
rows are bulk-loaded before timing.

- batch: `core.risk.detect_period` over all attempts, as `python -m core bursts` runs it: read
  the declined attempts, detect, write every flag (first run, empty risk_flags), then a rerun
  that finds nothing to change.
- baseline: pandas reads the same declined attempts and, per entity kind, a time-based
  `rolling("60min", closed="both").count()` per entity; bursts only (no card testing, no
  merging of windows into flags), i.e. less work than the real detection.
- incidents: the batch run also groups the flags into incidents (shared attempts); a one-rule
  backtest over 90 days (`core.risk.backtest.backtest`) reads and detects under both rule sets.
- incremental: declined attempts recorded one transaction each through
  `core.webhook.handlers.record_attempt`, with and without the burst hook, on the 1M-row
  database; the hook itself is also timed inside the transaction.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench.common import write_section
from core import migrate
from core.db import make_engine, session_scope
from core.risk import backtest as risk_backtest
from core.risk import batch as risk_batch
from core.risk import flags, hook
from core.risk.detector import ENTITY_COLUMNS, NO_FILTER, Filter
from core.risk.rules import build, describe_filter, rule_table
from core.settings import Settings
from core.webhook.handlers import Context, RecordedAttempt, record_attempt

N = int(os.environ.get("BENCH_BURSTS_ATTEMPTS", "1000000"))
INCREMENTAL = int(os.environ.get("BENCH_BURSTS_INCREMENTAL", "2000"))
DAYS = 30
DECLINE_SHARE = 0.15
# The rules live by default (core.risk.rules.seed with default settings): 4 failures within
# 60 minutes, 3 cards for card testing, promotion codes at 12.
RULES = flags.rules_from(Settings.model_construct())  # defaults, whatever the environment says
LARGE = Filter("usd", 10_000)  # a rule counting only failures of USD 100.00 or more
START = datetime(2026, 10, 1, tzinfo=UTC)
COLUMNS = [
    "id",
    "created",
    "outcome",
    "card_fingerprint",
    "customer_id",
    "email",
    "ip_address",
    "promotion_code",
    "amount",
    "currency",
]


# --- Data -------------------------------------------------------------------------------------


def generate(n: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seconds = DAYS * 86400
    created = START + pd.to_timedelta(np.sort(rng.integers(0, seconds, n)), unit="s")

    def pool(prefix: str, size: int) -> np.ndarray[Any, Any]:
        # Skewed reuse: a few heavy entities (the first gets ~1/sqrt(size) of the rows), a long
        # tail of entities seen once or twice.
        idx = (size * rng.random(n) ** 2).astype(np.int64)
        return np.char.add(prefix, idx.astype(str))

    cards = pool("fp", 200_000)
    customers = pool("cus_", 150_000)
    emails = np.char.add(pool("buyer", 150_000), "@example.com")
    ips = pool("10.1.", 100_000)
    promos = pool("promo_", 40).astype(object)
    promos[rng.random(n) >= 0.2] = None  # a promotion code on a fifth of attempts
    frame = pd.DataFrame(
        {
            "id": np.char.add("ch_bench", np.arange(n).astype(str)),
            "created": created,
            "outcome": np.where(rng.random(n) < DECLINE_SHARE, "failed", "succeeded"),
            "card_fingerprint": cards,
            "customer_id": customers,
            "email": emails,
            "ip_address": ips,
            "promotion_code": promos,
            "amount": rng.integers(500, 20_000, n),
            "currency": "usd",
        }
    )
    # Attacks: 50 card-testing IPs (20 cards each within 10 minutes), 50 stolen cards retried.
    attacks: list[tuple[Any, ...]] = []
    for k in range(50):
        at = START + timedelta(seconds=int(rng.integers(0, seconds - 3600)))
        for j in range(20):
            attacks.append(
                (
                    f"ch_attack_ip{k}_{j}",
                    at + timedelta(seconds=30 * j),
                    "failed",
                    f"fp_tested_{k}_{j}",
                    None,
                    None,
                    f"203.0.113.{k}",
                    None,
                    100,
                    "usd",
                )
            )
            attacks.append(
                (
                    f"ch_attack_fp{k}_{j}",
                    at + timedelta(seconds=90 * j),
                    "failed",
                    f"fp_stolen_{k}",
                    f"cus_thief{k}",
                    None,
                    None,
                    None,
                    9900,
                    "usd",
                )
            )
    extra = pd.DataFrame(attacks[: max(0, n // 500)], columns=COLUMNS)
    frame = pd.concat([frame.iloc[: n - len(extra)], extra], ignore_index=True)
    return frame


def load_sqlite(engine: Engine, frame: pd.DataFrame) -> None:
    rows = (
        frame.assign(
            created=frame["created"].dt.strftime("%Y-%m-%d %H:%M:%S.%f"),
        )
        .astype(object)
        .where(frame.notna(), None)
    )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        cur.executemany(
            f"INSERT INTO payment_attempts ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)})",
            list(rows.itertuples(index=False, name=None)),
        )
        cur.execute("COMMIT")
        cur.execute("ANALYZE")
    finally:
        raw.close()


def load_postgres(engine: Engine, frame: pd.DataFrame) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:  # type: ignore[attr-defined]
            with cur.copy(f"COPY payment_attempts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in frame.itertuples(index=False, name=None):
                    copy.write_row([None if pd.isna(v) else v for v in row])
            cur.execute("ANALYZE payment_attempts")
        raw.commit()
    finally:
        raw.close()


# --- Measurements -----------------------------------------------------------------------------


@dataclass
class Figures:
    backend: str
    load_s: float
    failed: int
    batch_first_s: float
    batch_rerun_s: float
    batch_rerun_cpu_s: float
    flags: int
    baseline_s: float
    baseline_entities: int
    burst_entities: int
    without_hook_ms: float
    with_hook_ms: float
    hook_p50_ms: float
    hook_p99_ms: float
    hook_mean_ms: float
    hook_cpu_mean_ms: float
    hook_cpu_p99_ms: float
    incidents: int = 0
    backtest_s: float = 0.0
    backtest_filter_s: float = 0.0


def backtest_one_rule(engine: Engine, counted: Filter = NO_FILTER) -> float:
    """Wall time of a backtest of one changed rule (card bursts at 5, or at 4 counting only the
    failures `counted` takes) over a 90-day period holding every attempt, against the default
    rules: reads and detects twice, writes nothing."""
    threshold = 4 if counted else 5
    proposed = build(
        [
            (k, p, threshold, m, counted) if (k, p) == ("card", "burst") else (k, p, t, m, f)
            for k, p, t, m, f in rule_table(RULES)
        ],
        [],
    )
    since = START + timedelta(days=DAYS) - timedelta(days=90)
    started = time.perf_counter()
    with session_scope(engine, write=False) as session:
        risk_backtest.backtest(session, RULES, proposed, since, START + timedelta(days=DAYS))
    return time.perf_counter() - started


def incident_count(engine: Engine) -> int:
    with session_scope(engine, write=False) as session:
        return int(session.execute(text("SELECT count(*) FROM risk_incidents")).scalar_one())


def batch(engine: Engine) -> tuple[float, float, float, int]:
    """Wall time of the first run and of a rerun, CPU time of the rerun (the machine is shared:
    CPU time is what the work costs whatever else runs), and the flags found."""
    started = time.perf_counter()
    with session_scope(engine) as session:
        result = risk_batch.detect_period(session, RULES)
    first = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    with session_scope(engine) as session:
        again = risk_batch.detect_period(session, RULES)
    rerun, rerun_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert not (again.changes.created or again.changes.updated or again.changes.removed)
    return first, rerun, rerun_cpu, result.flags


def baseline(engine: Engine) -> tuple[float, int]:
    """Plain pandas: read the declined attempts, then a time-based rolling count per entity."""
    started = time.perf_counter()
    with engine.connect() as conn:
        frame = pd.read_sql(
            text(
                "SELECT id, created, card_fingerprint, customer_id, email, ip_address, "
                "promotion_code FROM payment_attempts WHERE outcome = 'failed'"
            ),
            conn,
        )
    frame["created"] = pd.to_datetime(frame["created"], format="ISO8601", utc=True)
    flagged = 0
    for kind, column in ENTITY_COLUMNS.items():
        part = frame[["created", column]].dropna().sort_values([column, "created"])
        counts = (
            part.set_index("created")
            .groupby(column)[column]
            .rolling(f"{int(RULES.window.total_seconds())}s", closed="both")
            .count()
        )
        threshold = RULES.rule(kind, "burst").threshold
        flagged += counts[counts >= threshold].index.get_level_values(0).nunique()
    return time.perf_counter() - started, flagged


def burst_entities(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT DISTINCT entity_kind, entity_value "
                    "FROM risk_flags WHERE pattern = 'burst') AS e"
                )
            ).scalar_one()
        )


def incremental(
    engine: Engine, frame: pd.DataFrame, count: int
) -> tuple[float, float, list[float], list[float]]:
    """Mean ms per recorded declined attempt without and with the hook, and the hook's own times."""
    rng = random.Random(11)
    sample = frame.iloc[rng.sample(range(len(frame)), 2 * count)]
    hook_times: list[float] = []
    hook_cpu: list[float] = []
    timed_hook = hook.attempt_hook(RULES)

    def measured(session: Session, attempt: RecordedAttempt) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        timed_hook(session, attempt)
        hook_times.append((time.perf_counter() - started) * 1000)
        hook_cpu.append((time.thread_time() - cpu) * 1000)

    def run(rows: pd.DataFrame, ctx: Context, tag: str) -> float:
        started = time.perf_counter()
        records = cast(
            list[dict[str, Any]], rows.astype(object).where(rows.notna(), None).to_dict("records")
        )
        for i, row in enumerate(records):
            values = {
                "id": f"ch_incr_{tag}_{i}",
                "payment_intent_id": None,
                "customer_id": row["customer_id"],
                "email": row["email"],
                "card_fingerprint": row["card_fingerprint"],
                "card_last4": "0002",
                "card_brand": "visa",
                "ip_address": row["ip_address"],
                "promotion_code": row["promotion_code"],
                "amount": int(row["amount"]),
                "currency": "usd",
                "outcome": "failed",
                "failure_code": "card_declined",
                "decline_code": "generic_decline",
                "network_status": "declined_by_network",
                "failure_message": "Your card was declined.",
                "created": row["created"].to_pydatetime(),
            }
            with session_scope(engine) as session:
                record_attempt(
                    session, values, {"id": f"evt_{tag}_{i}", "type": "charge.failed"}, ctx
                )
        return (time.perf_counter() - started) * 1000 / len(rows)

    without = run(sample.iloc[:count], Context(), "plain")
    with_hook = run(sample.iloc[count:], Context(on_attempt=(measured,)), "hook")
    return without, with_hook, hook_times, hook_cpu


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def measure(backend: str, engine: Engine, frame: pd.DataFrame) -> Figures:
    migrate.upgrade(engine)
    started = time.perf_counter()
    (load_sqlite if backend == "SQLite" else load_postgres)(engine, frame)
    load_s = time.perf_counter() - started
    print(f"  {backend}: loaded {len(frame):,} attempts in {load_s:.1f} s")
    print(f"  {backend}: load average before timing: {load_average()}")
    first, rerun, rerun_cpu, flags = batch(engine)
    incidents = incident_count(engine)
    print(
        f"  {backend}: batch {first:.2f} s ({flags} flags, {incidents} incidents), "
        f"rerun {rerun:.2f} s"
    )
    backtest_s = backtest_one_rule(engine)
    backtest_filter_s = backtest_one_rule(engine, LARGE)
    print(
        f"  {backend}: backtest of one rule over 90 days {backtest_s:.2f} s, "
        f"with a filter {backtest_filter_s:.2f} s"
    )
    ours = burst_entities(engine)
    base_s, base_entities = baseline(engine)
    print(f"  {backend}: pandas rolling baseline {base_s:.2f} s")
    without, with_hook, hook_times, hook_cpu = incremental(engine, frame, INCREMENTAL)
    q = statistics.quantiles(hook_times, n=100)
    print(
        f"  {backend}: incremental {with_hook - without:+.3f} ms/attempt, hook p50 {q[49]:.3f} ms"
    )
    return Figures(
        backend,
        load_s,
        int((frame["outcome"] == "failed").sum()),
        first,
        rerun,
        rerun_cpu,
        flags,
        base_s,
        base_entities,
        ours,
        without,
        with_hook,
        q[49],
        q[98],
        statistics.fmean(hook_times),
        statistics.fmean(hook_cpu),
        statistics.quantiles(hook_cpu, n=100)[98],
        incidents,
        backtest_s,
        backtest_filter_s,
    )


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="bench-bursts-") as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgres_engine() -> Iterator[Engine]:
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        admin = make_engine(server.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE bench"))
        admin.dispose()
        engine = make_engine(server.url("bench"))
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        server.stop()


def report(figures: list[Figures], n: int) -> str:
    lines = [
        f"{n:,} attempts over {DAYS} days ({DECLINE_SHARE:.0%} declined, plus injected attacks); "
        f"rules: the defaults, {RULES.threshold} failures within {RULES.window} (promotion codes "
        f"{RULES.rule('promotion_code', 'burst').threshold}), card testing at "
        f"{RULES.card_testing_threshold} distinct cards. Incremental: {INCREMENTAL} declined "
        "attempts per variant, one transaction each.",
        "",
        "| | SQLite | PostgreSQL |",
        "| --- | --: | --: |",
    ]
    rows: list[tuple[str, Callable[[Figures], str]]] = [
        ("declined attempts read", lambda f: f"{f.failed:,}"),
        ("batch detection, first run (writes every flag)", lambda f: f"{f.batch_first_s:.2f} s"),
        ("batch detection, rerun (nothing to change)", lambda f: f"{f.batch_rerun_s:.2f} s"),
        (
            "batch detection, rerun: CPU time of the process",
            lambda f: f"{f.batch_rerun_cpu_s:.2f} s",
        ),
        ("flags found", lambda f: f"{f.flags:,}"),
        (
            "incidents (flags grouped by shared attempts, in the batch run)",
            lambda f: f"{f.incidents:,}",
        ),
        ("backtest of one rule over 90 days (reads only)", lambda f: f"{f.backtest_s:.2f} s"),
        (
            f"the same, the rule with a filter ({describe_filter(LARGE)})",
            lambda f: f"{f.backtest_filter_s:.2f} s",
        ),
        ("pandas rolling-window baseline (bursts only)", lambda f: f"{f.baseline_s:.2f} s"),
        (
            "entities with a burst: baseline / ours",
            lambda f: f"{f.baseline_entities:,} / {f.burst_entities:,}",
        ),
        ("record a declined attempt, without the hook", lambda f: f"{f.without_hook_ms:.3f} ms"),
        ("record a declined attempt, with the hook", lambda f: f"{f.with_hook_ms:.3f} ms"),
        (
            "added cost of incremental detection per attempt",
            lambda f: f"{f.with_hook_ms - f.without_hook_ms:+.3f} ms",
        ),
        ("the hook alone, p50 / p99", lambda f: f"{f.hook_p50_ms:.3f} / {f.hook_p99_ms:.3f} ms"),
        ("the hook alone, mean", lambda f: f"{f.hook_mean_ms:.3f} ms"),
        (
            "the hook alone, CPU time mean / p99",
            lambda f: f"{f.hook_cpu_mean_ms:.3f} / {f.hook_cpu_p99_ms:.3f} ms",
        ),
    ]
    by_backend = {f.backend: f for f in figures}
    for label, value in rows:
        cells = [value(by_backend[b]) if b in by_backend else "–" for b in ("SQLite", "PostgreSQL")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "Targets: batch (with incident grouping) under 1 s on SQLite, incremental under 1 ms "
        "per attempt, a one-rule backtest over 90 days under 2 s. The baseline "
        "counts bursts only, per row; the entity counts should match (ours also merges windows "
        "into flags and finds card testing).",
    ]
    return "\n".join(lines)


def main() -> None:
    frame = generate(N)
    figures = []
    with sqlite_engine() as engine:
        figures.append(measure("SQLite", engine, frame))
    with postgres_engine() as engine:
        figures.append(measure("PostgreSQL", engine, frame))
    body = report(figures, N) + (
        f"\n\nLoad average (1 min) at the end of the run: {load_average()} on "
        f"{os.cpu_count()} cores shared with other work: wall times include waiting for a core."
    )
    print(body)
    write_section("bursts", "Burst detection", "python -m bench bursts", body)


if __name__ == "__main__":
    main()
