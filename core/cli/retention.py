"""`python -m core retention [--apply]`: remove delivery rows, rejected-request samples and raw
event bodies older than the RETENTION_* settings. A dry run (counts only) unless --apply; an
applied run is audited. Meant for cron, daily."""

from __future__ import annotations

import argparse

from core.auth.permissions import Actor
from core.console import retention
from core.db import get_engine
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--apply", action="store_true", help="remove what is too old (default: dry run)"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    # The operator at the command line (or cron) holds the machine: an admin, by name.
    actor = Actor("cli:retention", "admin")
    report = retention.run(
        get_engine(settings.database_url), retention.Policy.of(settings), actor, apply=args.apply
    )
    print("\n".join(report.lines()))
    return 0
