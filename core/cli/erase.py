"""`python -m core erase --email … | --customer cus_… --reason … [--apply]`: an erasure
request (GDPR Article 17). Without --apply it is a dry run that lists what would change.
What must also be done in Stripe is in the README ("Personal data")."""

from __future__ import annotations

import argparse
import getpass
import sys

from core.auth.permissions import Actor
from core.console.erasure import ErasureError, erase
from core.db import get_engine, session_scope
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="the person's email address")
    who.add_argument("--customer", help="the person's Stripe customer id (cus_…)")
    parser.add_argument("--reason", default="", help="the request's reference (required to apply)")
    parser.add_argument("--apply", action="store_true", help="really change the data")


def _operator() -> Actor:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    # The command line is run by an operator with database access: an admin in effect.
    return Actor(f"cli:{name}", "admin")


def run(args: argparse.Namespace) -> int:
    engine = get_engine(get_settings().database_url)
    try:
        with session_scope(engine, write=args.apply) as session:
            report = erase(
                session,
                _operator(),
                email=args.email,
                customer=args.customer,
                reason=args.reason,
                apply=args.apply,
            )
    except ErasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    if not args.apply:
        print("dry run: nothing changed; add --apply (with --reason) to erase")
    return 0
