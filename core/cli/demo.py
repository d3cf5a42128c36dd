"""`python -m core demo`: fill the database with realistic activity, through the webhook path."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from core.db import get_engine
from core.risk import flags
from core.runtime import webhook_context
from core.settings import get_settings
from demo import generator as demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=90, help="days of activity (default: 90)")
    parser.add_argument(
        "--orders", type=int, default=20_000, help="Checkout Sessions to simulate (default: 20000)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument(
        "--once", action="store_true", help="do nothing if the database already holds demo data"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.is_production:
        print("error: the demo never runs with APP_ENV=production", file=sys.stderr)
        return 2
    if args.days < 1 or args.orders < 1:
        print("error: --days and --orders must be positive", file=sys.stderr)
        return 2
    secrets = settings.webhook_secrets
    # Burst detection runs once at the end over the whole period (the same flags as the
    # per-attempt hook stores, computed in one pass) rather than after each of some 18,000 attempts.
    context = dataclasses.replace(webhook_context(settings), on_attempt=())
    # The simulated outages and bursts would log a line each, as they do in production; here
    # they are planned, and the summary below counts them.
    for name in ("core.webhook", "core.webhook.fulfillment", "core.risk"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    report = demo.run(
        get_engine(settings.database_url),
        context,
        risk_rules=flags.rules_from(settings),
        orders=args.orders,
        days=args.days,
        seed=args.seed,
        once=args.once,
        secrets=secrets or [demo.DEMO_SECRET],
        tolerance=settings.stripe_webhook_tolerance,
        progress=print,
    )
    print(report.summary())
    return 0
