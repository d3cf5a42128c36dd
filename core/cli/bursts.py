"""`python -m core bursts [--since ISO] [--until ISO]`: batch burst detection over a period.

Recomputes the flags of every entity for the period and stores the difference, exactly as
incremental detection on the webhook path would have; then delivers pending alerts (unless
--no-alerts), since alerts are never sent from the webhook path."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from core.console import alerts
from core.db import get_engine, session_scope
from core.risk import batch, rules
from core.settings import get_settings


def iso_time(value: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {value!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=iso_time, help="start of the period, ISO 8601, UTC without a zone"
    )
    parser.add_argument("--until", type=iso_time, help="end of the period (default: no end)")
    parser.add_argument(
        "--no-alerts", action="store_true", help="only detect; leave alerts to `alerts check`"
    )


def run(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since > args.until:
        print("error: --since is after --until")
        return 2
    settings = get_settings()
    engine = get_engine(settings.database_url)
    started = time.perf_counter()
    with session_scope(engine) as session:
        _version, live = rules.live(session, settings)
        result = batch.detect_period(session, live, args.since, args.until)
    elapsed = time.perf_counter() - started
    changes = result.changes
    print(
        f"{result.attempts} failed attempts read, {result.flags} flags in the period "
        f"({len(changes.created)} new, {len(changes.updated)} updated, "
        f"{len(changes.removed)} merged away) in {elapsed:.2f} s"
    )
    if not args.no_alerts:
        report = alerts.run(engine, settings)
        print(report.describe())
    return 0
