"""The public webhook receiver: read the raw body, hand it to core, answer. Nothing else.

uvicorn receiver.app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import webhooks
from core.db import get_engine, is_sqlite
from core.prom import SignalsCollector
from core.runtime import webhook_context
from core.settings import ConfigError, Settings, get_settings

log = logging.getLogger("receiver")


MAX_GROUP = 64  # deliveries per group commit: bounds the wait of the first one in a group
IDLE_TURNS = 3  # turns of the event loop without a new delivery that end the gathering


@dataclass
class State:
    engine: Engine
    writer: GroupWriter


class GroupWriter:
    """Group commit: one writer per process; deliveries that arrive while it writes a group
    wait and go together in the next one (core.webhooks.receive_many), each answered only
    after the commit that holds it. Alone, a delivery is written at once, by itself.

    SQLite takes one writer at a time, so its groups are written on the event loop (a thread
    would only add hand-offs); PostgreSQL's are written in a thread, the loop reading on."""

    def __init__(self, write: Callable[[list[webhooks.Delivery]], list[webhooks.Outcome]],
                 on_loop: bool) -> None:  # fmt: skip
        self.write = write
        self.on_loop = on_loop
        self.waiting: list[tuple[webhooks.Delivery, asyncio.Future[webhooks.Outcome]]] = []
        self.busy = False
        self.task: asyncio.Task[None] | None = None  # referenced, so never collected mid-run

    async def submit(self, delivery: webhooks.Delivery) -> webhooks.Outcome:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((delivery, future))
        if not self.busy:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._drain())
        # Shielded: a client that hangs up does not stop its delivery from being written.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting[:MAX_GROUP], self.waiting[MAX_GROUP:]
                deliveries = [delivery for delivery, _ in group]
                try:
                    if self.on_loop:
                        outcomes = self.write(deliveries)
                    else:
                        outcomes = await run_in_threadpool(self.write, deliveries)
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{len(outcomes)} answers for {len(group)} deliveries")
                except Exception:  # receive_many answers every failure itself; this is a bug
                    log.exception("webhook group writer failed")
                    outcomes = [webhooks.Outcome(500, "error", "processing_failed")] * len(group)
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    future.set_result(outcome)
                await self._gather()
        finally:
            self.busy = False

    async def _gather(self) -> None:
        """Let the loop read the requests that arrived while a group was written, so that they
        join the next group: a request takes a few turns of the loop to reach `submit`, and
        bigger groups amortise a commit (about 1 ms on SQLite) over more events. Stops when
        the loop turned without bringing a delivery, or the group is full."""
        idle = 0
        while idle < IDLE_TURNS and len(self.waiting) < MAX_GROUP:
            seen = len(self.waiting)
            await asyncio.sleep(0)
            idle = idle + 1 if len(self.waiting) == seen else 0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "webhook_deliveries",
            "Webhook deliveries by outcome and rejection reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "webhook_processing_seconds",
            "Time to verify, record and apply one delivery",
            ["outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


async def _read_capped(request: Request, limit: int) -> tuple[bytes, bool]:
    """The raw body, or (prefix, True) when it exceeds `limit` bytes."""
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


def create_app(settings: Settings | None = None) -> Starlette:
    metrics = Metrics()
    state: dict[str, State] = {}
    metrics.registry.register(SignalsCollector(lambda: state["s"].engine))  # read at scrape time

    refusal: list[str] = []

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            conf = settings or get_settings()
            secrets = conf.require_webhook_secrets()  # refuse to start without one
        except ConfigError as exc:
            refusal.append(str(exc))
            raise
        engine = get_engine(conf.database_url)
        write = functools.partial(
            webhooks.receive_many,
            engine,
            secrets=secrets,
            tolerance=conf.stripe_webhook_tolerance,
            ctx=webhook_context(conf),
        )
        state["s"] = State(engine, GroupWriter(write, on_loop=is_sqlite(engine)))
        yield

    async def stripe_webhook(request: Request) -> Response:
        s = state["s"]
        started = time.perf_counter()
        body, too_large = await _read_capped(request, webhooks.MAX_BODY_BYTES)
        delivery = webhooks.Delivery(
            body,
            request.headers.get("stripe-signature"),
            remote_addr=request.client.host if request.client else None,
            too_large=too_large,
        )
        outcome = await s.writer.submit(delivery)
        metrics.deliveries.labels(outcome.result, outcome.reason or "").inc()
        metrics.latency.labels(outcome.result).observe(time.perf_counter() - started)
        return JSONResponse(outcome.body(), status_code=outcome.status)

    async def healthz(_request: Request) -> Response:
        try:
            await run_in_threadpool(_ping, state["s"].engine)
        except Exception:
            return JSONResponse({"status": "unhealthy", "database": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    async def prometheus(_request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, metrics.registry)  # queries the database
        return Response(body, media_type=CONTENT_TYPE_LATEST)

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


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


app = create_app()
