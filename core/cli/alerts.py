"""`python -m core alerts`: raise the alerts whose conditions fire and post the pending ones to
ALERT_WEBHOOK_URL. Meant for cron every few minutes; never part of the webhook path."""

from __future__ import annotations

import argparse

from core.console import alerts
from core.db import get_engine
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", default="check", choices=["check"], help="check (the default)"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    report = alerts.run(get_engine(settings.database_url), settings)
    print(report.describe())
    return 1 if report.failed else 0
