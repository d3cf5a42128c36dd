"""`python -m core audit verify|list`: check the audit log's hash chain, or read its tail.

`verify` exits 0 when every entry verifies, 1 when the chain is broken (and says at which
entry), so cron or CI can alert on it."""

from __future__ import annotations

import argparse
import json

from core.auth import audit
from core.db import get_engine, session_scope
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="action")
    sub.add_parser("verify", help="walk the hash chain; exit 1 if any entry was changed")
    tail = sub.add_parser("list", help="print the newest entries")
    tail.add_argument("--limit", type=int, default=20)
    tail.add_argument("--actor")
    tail.add_argument("--action")


def run(args: argparse.Namespace) -> int:
    engine = get_engine(get_settings().database_url)
    with session_scope(engine, write=False) as session:
        if args.audit_command == "verify":
            status = audit.verify(session)
            print(status.describe())
            return 0 if status.ok else 1
        page = audit.search(
            session, audit.AuditFilter(actor=args.actor, action=args.action), limit=args.limit
        )
        for entry in page.rows:
            details = json.dumps(entry.details, sort_keys=True, default=str)
            print(
                f"{entry.id:>8} {entry.at:%Y-%m-%d %H:%M:%S} {entry.actor} ({entry.role or '-'}) "
                f"{entry.action} {entry.target or ''} {details}"
            )
        print(f"{len(page.rows)} of {page.total} entries")
    return 0
