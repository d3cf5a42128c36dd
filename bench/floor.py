"""The floor of the receiver's stack: the least a verified webhook endpoint can do on the same
uvicorn + Starlette + SQLite setup, to put the real receiver's figures in proportion.

It checks the Stripe-Signature HMAC and the timestamp tolerance, reads the event id and inserts
it into a one-column table (SQLite in WAL mode, synchronous=NORMAL, as core.db configures), then
answers like the receiver. No ORM, no delivery row, no handler, and the insert runs on the event
loop with one connection: nothing that is not strictly needed.

    FLOOR_DATABASE=/tmp/floor.db FLOOR_SECRET=whsec_... uvicorn bench.floor:app

Run by bench/receiver.py; not part of the product.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOLERANCE_SECONDS = 300


class _Floor:
    def __init__(self) -> None:
        self.secret = os.environ["FLOOR_SECRET"].encode()
        self.conn = sqlite3.connect(os.environ["FLOOR_DATABASE"], isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY)")

    def verified_event_id(self, body: bytes, header: str) -> str | None:
        timestamp, signatures = "", []
        for item in header.split(","):
            key, _, value = item.partition("=")
            if key == "t":
                timestamp = value
            elif key == "v1":
                signatures.append(value)
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            return None
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        digest = expected.hexdigest()
        if not any(hmac.compare_digest(digest, sig) for sig in signatures if sig.isascii()):
            return None
        event_id = json.loads(body).get("id")
        return event_id if isinstance(event_id, str) else None

    def insert(self, event_id: str) -> bool:
        cursor = self.conn.execute("INSERT OR IGNORE INTO events (id) VALUES (?)", (event_id,))
        return cursor.rowcount == 1


def create_app() -> Starlette:
    floor: dict[str, _Floor] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        floor["f"] = _Floor()
        yield
        floor["f"].conn.close()

    async def webhook(request: Request) -> Response:
        body = await request.body()
        event_id = floor["f"].verified_event_id(body, request.headers.get("stripe-signature", ""))
        if event_id is None:
            return JSONResponse({"result": "rejected"}, status_code=400)
        result = "processed" if floor["f"].insert(event_id) else "duplicate"
        return JSONResponse({"result": result, "event_id": event_id})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/stripe", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
