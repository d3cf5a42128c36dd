"""The public webhook receiver: read the raw body, hand it to core, answer. Nothing else.

uvicorn receiver.app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import get_engine, is_sqlite
from core.runtime import webhook_context
from core.settings import ConfigError, Settings, get_settings
from core.webhook import receive, signature
from receiver.group import GroupWriter
from receiver.metrics import Metrics


@dataclass
class State:
    engine: Engine
    writer: GroupWriter
    metrics: Metrics


def _state(request: Request) -> State:
    state: State = request.app.state.receiver
    return state


async def stripe_webhook(request: Request) -> Response:
    s = _state(request)
    started = time.perf_counter()
    body, too_large = await _read_capped(request, signature.MAX_BODY_BYTES)
    delivery = receive.Delivery(
        body,
        request.headers.get("stripe-signature"),
        remote_addr=request.client.host if request.client else None,
        too_large=too_large,
    )
    outcome = await s.writer.submit(delivery)
    s.metrics.observe(outcome, time.perf_counter() - started)
    return JSONResponse(outcome.body(), status_code=outcome.status)


async def healthz(request: Request) -> Response:
    try:
        await run_in_threadpool(_ping, _state(request).engine)
    except Exception:
        return JSONResponse({"status": "unhealthy", "database": "unavailable"}, 503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def prometheus(request: Request) -> Response:
    registry = _state(request).metrics.registry
    body = await run_in_threadpool(generate_latest, registry)  # queries the database
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _read_capped(request: Request, limit: int) -> tuple[bytes, bool]:
    """The raw body, or (b"", True) when it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


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
        engine = get_engine(conf.database_url)
        write = functools.partial(
            receive.receive_many,
            engine,
            secrets=secrets,
            tolerance=conf.stripe_webhook_tolerance,
            ctx=webhook_context(conf),
        )
        writer = GroupWriter(write, on_loop=is_sqlite(engine))
        app.state.receiver = State(engine, writer, Metrics(engine))
        yield

    return Starlette(
        routes=[
            Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(CleanRefusal, refusal=refusal)],
    )


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
