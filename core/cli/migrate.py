"""`python -m core migrate`: create or upgrade the schema of DATABASE_URL."""

from __future__ import annotations

import argparse

from core import migrate
from core.db import get_engine
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default="head", help="target revision (default: head)")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    migrate.upgrade(get_engine(settings.database_url), args.revision)
    print(f"database schema is at {args.revision}")
    return 0
