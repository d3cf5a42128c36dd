"""`python -m core audit verify|checkpoint|list`: check the audit log's hash chain, anchor
its head outside the database, or read its tail.

`verify` exits 0 when every entry verifies and agrees with every checkpoint, 1 when the
chain is broken or its newest entries were deleted (and says where), so cron or CI can alert
on it. `checkpoint` (cron, e.g. every 5 minutes) appends the newest entry's id and hash,
signed with AUDIT_CHECKPOINT_KEY, to AUDIT_CHECKPOINT_PATH and the log."""

from __future__ import annotations

import argparse
import json
import sys

from core.auth import anchor, audit
from core.db import get_engine, session_scope
from core.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="action")
    sub.add_parser(
        "verify", help="walk the hash chain and check it against the checkpoints; exit 1 if not"
    )
    sub.add_parser("checkpoint", help="append the signed head of the chain to the checkpoint file")
    tail = sub.add_parser("list", help="print the newest entries")
    tail.add_argument("--limit", type=int, default=20)
    tail.add_argument("--actor")
    tail.add_argument("--action")


def run(args: argparse.Namespace) -> int:
    engine = get_engine(get_settings().database_url)
    with session_scope(engine, write=False) as session:
        try:
            if args.audit_command == "verify":
                status = anchor.verify(session)
                print(status.describe())
                if status.warning:
                    print(f"warning: {status.warning}", file=sys.stderr)
                return 0 if status.ok else 1
            if args.audit_command == "checkpoint":
                point = anchor.take(session)
                if point is None:
                    print("the audit log is empty: nothing to checkpoint")
                    return 0
                path = anchor.write(point)
                print(f"checkpoint: entry {point.entry_id} ({point.entries} entries) -> {path}")
                return 0
        except anchor.CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
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
