"""`python -m core reconcile [--days 30]`: apply Stripe's events we lack, repair paid sessions
without a paid order, and report what was done."""

from __future__ import annotations

import argparse
import sys

from core.auth.permissions import Actor
from core.console.reconcile import RETENTION_DAYS, reconcile
from core.console.stripe_api import StripeProblem, client_from_settings
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
    try:
        client = client_from_settings(settings)
        report = reconcile(
            get_engine(settings.database_url),
            client,
            webhook_context(settings),
            Actor("cli:reconcile"),
            days=args.days,
        )
    except StripeProblem as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if client.is_standin:
        print("note: talking to the local Stripe stand-in, not a real Stripe account")
    print("\n".join(report.lines()))
    return 1 if report.failed else 0
