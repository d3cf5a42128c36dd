"""`python -m core reconcile [--days 30]`: apply Stripe's events we lack, repair paid sessions
without a paid order, and report what was done. Takes the same lock as the dashboard: while a
reconciliation runs anywhere, this one refuses to start (exit 3)."""

from __future__ import annotations

import argparse
import sys

from core.auth.permissions import Actor
from core.console import jobs
from core.console.reconcile import JOB, RETENTION_DAYS, ReconcileBusy, run_claimed, start
from core.console.stripe_api import StripeProblem, client_from_settings, new_token
from core.db import get_engine
from core.runtime import webhook_context
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days",
        type=int,
        default=RETENTION_DAYS,
        help=f"how far back to look, 1 to {RETENTION_DAYS} days (default {RETENTION_DAYS})",
    )


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= RETENTION_DAYS:
        print(f"error: --days must be between 1 and {RETENTION_DAYS}", file=sys.stderr)
        return 2
    settings = get_settings()
    engine = get_engine(settings.database_url)
    actor = Actor("cli:reconcile")
    token = new_token()

    def show(step: str, done: int, total: int | None) -> None:
        print(f"  {step}: {done}" + (f"/{total}" if total is not None else ""), file=sys.stderr)

    try:
        client = client_from_settings(settings)
        start(engine, actor, token, days=args.days)
    except StripeProblem as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except ReconcileBusy as busy:
        print(f"error: {busy}", file=sys.stderr)
        return 3
    if client.is_standin:
        print("note: talking to the local Stripe stand-in, not a real Stripe account")
    report = run_claimed(
        engine, client, webhook_context(settings), actor, token, days=args.days, progress=show
    )
    if report is None:
        state = jobs.state(engine, JOB)
        print("error: " + " ".join(state.result if state else ("reconciliation failed",)))
        return 1
    print("\n".join(report.lines()))
    return 1 if report.failed else 0
