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
    "retention": ("core.cli.retention", "prune old deliveries and bodies (dry run unless --apply)"),
    "erase": ("core.cli.erase", "pseudonymise a person's data on request (dry run unless --apply)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    words = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    parsers = {
        name: sub.add_parser(name, help=help_text, description=help_text)
        for name, (_module, help_text) in COMMANDS.items()
    }
    # Only the command being run is imported (`migrate` loads neither Stripe nor the demo).
    chosen = next((word for word in words if word in COMMANDS), None)
    runner: Callable[[argparse.Namespace], int] | None = None
    if chosen is not None:
        module = importlib.import_module(COMMANDS[chosen][0])
        module.add_arguments(parsers[chosen])
        runner = module.run
    args = parser.parse_args(words)
    assert runner is not None  # parse_args exits unless a command was given
    try:
        return runner(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
