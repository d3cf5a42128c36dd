"""`python -m core replay EVENT_ID [--apply]`: run a stored event's handler again; by default
a dry run that only reports what would change."""

from __future__ import annotations

import argparse
import sys

from core.auth.permissions import Actor
from core.console.replay import replay
from core.db import get_engine
from core.runtime import webhook_context
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("event_id", help="the Stripe event id (evt_...) stored in stripe_events")
    parser.add_argument(
        "--apply", action="store_true", help="commit the changes (default: dry run)"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    # The operator at the command line holds the machine: they act as an admin, by name.
    actor = Actor("cli:replay", "admin")
    try:
        result = replay(
            get_engine(settings.database_url),
            webhook_context(settings),
            actor,
            args.event_id,
            dry_run=not args.apply,
        )
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    for change in result.changes:
        print(f"  {change.kind} {change.table} {change.key}")
        for column, (before, after) in change.fields.items():
            print(f"    {column}: {before!r} -> {after!r}")
    return 1 if result.error else 0
