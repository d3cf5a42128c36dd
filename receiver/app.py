"""The public webhook receiver: read the raw body, hand it to core, answer. Nothing else.

python -m receiver --host 127.0.0.1 --port 8000   (uvicorn with the limits of receiver/edge.py)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, update
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import insert_ignore, make_engine, session_scope
from core.models import ReceiverHeartbeat, utcnow
from core.runtime import webhook_context
from core.settings import ConfigError, Settings, get_settings
from core.webhook import receive, signature
from receiver.group import GroupWriter
from receiver.metrics import Metrics

# A client's own trouble (it hung up) is logged where uvicorn logs connections, at INFO.
connection_log = logging.getLogger("uvicorn.error")


@dataclass
class State:
    engine: Engine
    writer: GroupWriter
    metrics: Metrics
    db_timeout: float  # seconds /healthz waits for its write


def _state(request: Request) -> State:
    state: State = request.app.state.receiver
    return state


class StripeWebhook:
    """POST /webhooks/stripe as a bare ASGI app: read the raw body, hand it to core, answer.

    Bare, not a Starlette endpoint: the Request, JSONResponse and exception wrappers around
    every delivery cost a good share of the event loop's time per event at saturation, for
    nothing this endpoint uses (it reads two headers and the body, and answers small JSON)."""

    async def __call__(self, scope: Scope, read: Receive, send: Send) -> None:
        s: State = scope["app"].state.receiver
        started = time.perf_counter()
        signature_header, declared = _webhook_headers(scope["headers"])
        client = scope.get("client")
        try:
            body, too_large = await _read_capped(read, declared, signature.MAX_BODY_BYTES)
        except ClientDisconnect:  # the client's business, not an error of ours: one quiet line
            peer = client[0] if client else "unknown"
            connection_log.info("webhook request from %s ended before its body was read", peer)
            return  # nothing to answer: the connection is gone
        delivery = receive.Delivery(
            body,
            signature_header,
            remote_addr=client[0] if client else None,
            too_large=too_large,
        )
        outcome = await s.writer.submit(delivery)
        s.metrics.observe(outcome, time.perf_counter() - started)
        answer = json.dumps(outcome.body(), separators=(",", ":")).encode()  # ASCII only
        await send(
            {
                "type": "http.response.start",
                "status": outcome.status,
                "headers": [
                    (b"content-length", str(len(answer)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def _webhook_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bytes | None]:
    """(Stripe-Signature, Content-Length) as sent, the first of each (names come lowercased)."""
    signature_header = declared = None
    for name, value in headers:
        if name == b"stripe-signature":
            if signature_header is None:
                signature_header = value.decode("latin-1")
        elif name == b"content-length" and declared is None:
            declared = value
    return signature_header, declared


async def healthz(request: Request) -> Response:
    """ok only when the database took and committed a write within the database timeout."""
    s = _state(request)
    try:
        await asyncio.wait_for(run_in_threadpool(_heartbeat, s.engine), s.db_timeout)
    except Exception:  # whatever failed, the answer is the same and says no more
        return JSONResponse({"status": "unhealthy", "database": "unavailable"}, 503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def prometheus(request: Request) -> Response:
    registry = _state(request).metrics.registry
    body = await run_in_threadpool(generate_latest, registry)  # queries the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _read_capped(read: Receive, declared: bytes | None, limit: int) -> tuple[bytes, bool]:
    """The raw body, or (b"", True) when it exceeds `limit` bytes (by its declared length, or
    as it arrives). Raises ClientDisconnect if the client hangs up first."""
    if declared and declared.isdigit() and int(declared) > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await read()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _heartbeat(engine: Engine) -> None:
    """Rewrite this receiver's heartbeat row and commit: a write the database must accept."""
    with session_scope(engine) as session:
        now = utcnow()
        if not insert_ignore(session, ReceiverHeartbeat, {"name": "receiver", "beat_at": now}):
            session.execute(
                update(ReceiverHeartbeat)
                .where(ReceiverHeartbeat.name == "receiver")
                .values(beat_at=now)
            )


def create_app(settings: Settings | None = None) -> Starlette:
    refusal: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            conf = settings or get_settings()
            secrets = conf.require_webhook_secrets()  # refuse to start without one
        except ConfigError as exc:
            refusal.append(str(exc))
            raise
        engine = _engine(conf.database_url, conf.receiver_db_timeout)
        write = functools.partial(
            receive.receive_many,
            engine,
            secrets=secrets,
            tolerance=conf.stripe_webhook_tolerance,
            ctx=webhook_context(conf),
        )
        writer = GroupWriter(write)
        app.state.receiver = State(engine, writer, Metrics(engine), conf.receiver_db_timeout)
        try:
            yield
        finally:
            writer.close()
            engine.dispose()

    return Starlette(
        routes=[
            Route("/webhooks/stripe", StripeWebhook(), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(CleanRefusal, refusal=refusal)],
    )


def _engine(url: str, db_timeout: float) -> Engine:
    """The receiver's own engine: a database that cannot take a write within `db_timeout`
    (a lock held elsewhere, a server that does not answer) is an outage, answered 503 at once,
    not after the default busy timeout."""
    if url.startswith("sqlite"):
        return make_engine(url, sqlite_busy_timeout_ms=int(db_timeout * 1000))
    return make_engine(url, connect_args={"connect_timeout": max(1, round(db_timeout))})


class CleanRefusal:
    """A configuration error at start-up becomes one clear line in the log instead of a
    traceback (uvicorn still exits non-zero). The message names variables, never values."""

    def __init__(self, app: ASGIApp, refusal: list[str]) -> None:
        self.app = app
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def clean_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.refusal:
                message = {**message, "message": f"Refusing to start: {self.refusal[-1]}"}
            await send(message)

        await self.app(scope, receive, clean_send)


app = create_app()
