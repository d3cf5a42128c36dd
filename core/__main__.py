"""The command line: `python -m core <command>`. Run `python -m core --help` for the list."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from core.settings import ConfigError

# command -> (module, what it does). Each module defines `add_arguments(parser)` and
# `run(args) -> int`, imported only when its command is used.
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("core.cli.migrate", "create or upgrade the database schema"),
    "reconcile": ("core.cli.reconcile", "apply Stripe events we missed; repair paid sessions"),
    "replay": ("core.cli.replay", "replay a stored Stripe event (dry run unless --apply)"),
    "standin": ("core.cli.standin", "serve the local Stripe stand-in for the offline demo"),
    "users": ("core.cli.users", "manage dashboard users and end their sessions"),
    "audit": ("core.cli.audit", "verify the audit log's hash chain, or list entries"),
    "demo": ("core.cli.demo", "fill the database with 90 days of demo activity (webhook path)"),
    "bursts": ("core.cli.bursts", "detect bursts of failed payments over a period"),
    "alerts": ("core.cli.alerts", "raise and deliver alerts (run it every few minutes)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    runners: dict[str, Callable[[argparse.Namespace], int]] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
        runners[name] = module.run
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
