"""`python -m core standin [--port 12111]`: serve the local Stripe stand-in for the offline demo
(Stripe-shaped answers derived from this database). Point STRIPE_API_BASE at it."""

from __future__ import annotations

import argparse
import sys

from core.db import get_engine
from core.settings import get_settings
from demo.standin import StandIn, make_server

DEFAULT_PORT = 12111


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 12111)")
    parser.add_argument(
        "--receiver-url",
        default="http://127.0.0.1:8000/webhooks/stripe",
        help="the webhook endpoint URL the stand-in reports",
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.is_production:
        print("error: the Stripe stand-in never runs in production", file=sys.stderr)
        return 2
    standin = StandIn(get_engine(settings.database_url), endpoint_url=args.receiver_url)
    standin.seed()
    server = make_server(standin, args.host, args.port)
    print(
        f"Stripe stand-in (NOT Stripe) on http://{args.host}:{args.port} "
        f"with {len(standin.codes)} promotion codes; set STRIPE_API_BASE to that URL",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
