"""A loopback Stripe for what localstripe lacks (promotion codes, Checkout Sessions, events,
webhook endpoints), on pytest-httpserver, answering with Stripe-shaped JSON built from Stripe's
own examples in tests/fixtures/.

    fake = FakeStripe.start()           # listens on 127.0.0.1, any free port
    client = StripeApi("sk_test_x", api_base=fake.url)
    ...
    fake.requests                       # every request: method, path, raw form pairs, headers
    fake.stop()

It keeps Stripe's idempotency contract (the same Idempotency-Key replays the first answer;
with other parameters it is an `idempotency_error`), pages lists newest first with
`starting_after`, and can be told to fail (`fail(path, status, times)`) or to answer slowly
after doing the work (`slow_after_work(path, seconds, times)`): Stripe created the object, the
client timed out.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.db import make_engine
from demo.standin import StandIn, decode_form, start_in_thread
from tests.support.stripe_objects import example

Json = dict[str, Any]


@dataclass
class Seen:
    method: str
    path: str
    pairs: list[tuple[str, str]]
    headers: dict[str, str]

    @property
    def params(self) -> Json:
        return decode_form(self.pairs)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class FakeStripe:
    server: HTTPServer
    coupons: dict[str, Json] = field(default_factory=dict)
    codes: dict[str, Json] = field(default_factory=dict)
    sessions: dict[str, Json] = field(default_factory=dict)
    intents: dict[str, Json] = field(default_factory=dict)
    events: dict[str, Json] = field(default_factory=dict)
    endpoints: list[Json] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    _idem: dict[str, tuple[str, int, Json]] = field(default_factory=dict)
    _fail: dict[str, list[int]] = field(default_factory=dict)
    _slow: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- Life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls) -> FakeStripe:
        server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        fake = cls(server)
        server.expect_request(re.compile(r"^/v1/.*")).respond_with_handler(fake._handle)
        server.start()
        return fake

    def stop(self) -> None:
        if self.server.is_running():
            self.server.clear()
            self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def writes(self, path: str | None = None) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and path in (None, r.path)]

    def fail(self, path: str, status: int, times: int = 1) -> None:
        self._fail.setdefault(path, []).extend([status] * times)

    def slow_after_work(self, path: str, seconds: float, times: int = 1) -> None:
        self._slow.setdefault(path, []).extend([seconds] * times)

    # --- Seeding (Stripe's examples, changed only where a test says) --------------------------

    def add_coupon(self, **fields: Any) -> Json:
        coupon = example("coupon")
        coupon.update(redeem_by=None, duration_in_months=None, percent_off=10.0)
        coupon.update(fields)
        self.coupons[coupon["id"]] = coupon
        return coupon

    def add_code(self, code: str, coupon: str, **fields: Any) -> Json:
        obj = example("promotion_code")
        obj.update(
            id=f"promo_{next(self._ids):06d}{code}",
            code=code,
            active=True,
            expires_at=None,
            created=int(time.time()) - next(self._ids),
            promotion={"type": "coupon", "coupon": coupon},
        )
        obj.update(fields)
        self.codes[obj["id"]] = obj
        return obj

    def add_session(self, checkout: Json, intent: Json | None = None) -> None:
        self.sessions[checkout["id"]] = checkout
        if intent is not None:
            self.intents[intent["id"]] = intent

    def add_event(
        self, event: Json, pending_webhooks: int = 0, failed_delivery: bool = False
    ) -> None:
        event = copy.deepcopy(event)
        event["pending_webhooks"] = pending_webhooks
        event["_failed_delivery"] = failed_delivery
        self.events[event["id"]] = event

    def add_endpoint(self, **fields: Any) -> Json:
        endpoint = example("webhook_endpoint")
        endpoint.update(fields)
        self.endpoints.append(endpoint)
        return endpoint

    # --- Answering ------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        pairs = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen = Seen(request.method, request.path, pairs, headers)
        with self._lock:
            self.requests.append(seen)
            failures = self._fail.get(request.path)
            if failures:
                status = failures.pop(0)
                return self._json(
                    status, {"error": {"type": "api_error", "message": "Stripe is down (fake)."}}
                )
        key = seen.idempotency_key if request.method == "POST" else None
        fingerprint = json.dumps([request.path, sorted(pairs)])
        with self._lock:
            if key and key in self._idem:
                first, status, body = self._idem[key]
                if first != fingerprint:
                    return self._json(
                        400,
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used "
                                "with the same parameters they were first used with.",
                            }
                        },
                    )
                return self._json(status, body, replayed=True)
            try:
                status, body = 200, self._route(request.method, request.path, seen.params)
            except _Error as exc:
                status, body = exc.status, {"error": {"type": exc.kind, "message": str(exc)}}
            if key:
                self._idem[key] = (fingerprint, status, body)
            delays = self._slow.get(request.path)
            delay = delays.pop(0) if delays else 0.0
        if delay:
            time.sleep(delay)  # the work is done; the answer comes too late
        return self._json(status, body)

    def _json(self, status: int, body: Json, replayed: bool = False) -> Response:
        headers = {"Request-Id": f"req_fake{next(self._ids):08d}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(json.dumps(body), status, headers, content_type="application/json")

    def _route(self, method: str, path: str, params: Json) -> Json:
        parts = path.strip("/").split("/")[1:]
        if parts[:1] == ["checkout"]:
            parts = ["checkout/sessions", *parts[2:]]
        resource, rest = parts[0], parts[1:]
        expand = set(params.get("expand") or [])
        if resource == "promotion_codes":
            if method == "GET" and not rest:
                items = list(self.codes.values())
                if "data.promotion.coupon" in expand:
                    items = [self._expand_coupon(c) for c in items]
                return self._page(items, params, path)
            if method == "POST" and not rest:
                return self._create_code(params)
            code = self._get(self.codes, rest[0], "promotion_code")
            if method == "POST":
                if "active" in params:
                    code["active"] = params["active"] == "true"
                return code
            return code
        if resource == "coupons":
            if method == "POST":
                if params.get("id") in self.coupons:
                    raise _Error(400, "Coupon already exists.")
                fields = {k: v for k, v in params.items() if k not in ("percent_off", "amount_off")}
                coupon = self.add_coupon(
                    **fields,
                    percent_off=float(params["percent_off"]) if "percent_off" in params else None,
                    amount_off=int(params["amount_off"]) if "amount_off" in params else None,
                )
                return coupon
            return self._get(self.coupons, rest[0], "coupon")
        if resource == "checkout/sessions":
            if not rest:
                items = [
                    s
                    for s in self.sessions.values()
                    if s["created"] >= int(params.get("created", {}).get("gte", 0))
                    and params.get("status") in (None, s["status"])
                ]
                return self._page(items, params, path)
            checkout = copy.deepcopy(self._get(self.sessions, rest[0], "checkout.session"))
            intent_id = checkout.get("payment_intent")
            if "payment_intent" in expand and isinstance(intent_id, str):
                intent = copy.deepcopy(self.intents[intent_id])
                if "payment_intent.latest_charge" not in expand and isinstance(
                    intent.get("latest_charge"), dict
                ):
                    intent["latest_charge"] = intent["latest_charge"]["id"]
                checkout["payment_intent"] = intent
            return checkout
        if resource == "payment_intents":
            return self._get(self.intents, rest[0], "payment_intent")
        if resource == "events":
            if rest:
                return self._public(self._get(self.events, rest[0], "event"))
            gte = int(params.get("created", {}).get("gte", 0))
            items = [e for e in self.events.values() if e["created"] >= gte]
            if params.get("delivery_success") == "false":
                items = [e for e in items if e["_failed_delivery"]]
            return self._page([self._public(e) for e in items], params, path)
        if resource == "webhook_endpoints":
            return self._page(self.endpoints, params, path)
        raise _Error(404, f"Unrecognized request URL ({method}: {path}).")

    @staticmethod
    def _public(event: Json) -> Json:
        return {k: v for k, v in event.items() if not k.startswith("_")}

    def _expand_coupon(self, code: Json) -> Json:
        coupon = self.coupons.get(code["promotion"]["coupon"])
        return {**code, "promotion": {**code["promotion"], "coupon": coupon}}

    def _create_code(self, params: Json) -> Json:
        promotion = params.get("promotion") or {}
        if promotion.get("coupon") not in self.coupons:
            raise _Error(400, f"No such coupon: '{promotion.get('coupon')}'")
        restrictions = example("promotion_code")["restrictions"]
        for name, value in (params.get("restrictions") or {}).items():
            restrictions[name] = value == "true" if value in ("true", "false") else value
            if name == "minimum_amount":
                restrictions[name] = int(value)
        return self.add_code(
            params["code"],
            promotion["coupon"],
            max_redemptions=int(params["max_redemptions"]) if "max_redemptions" in params else None,
            expires_at=int(params["expires_at"]) if "expires_at" in params else None,
            restrictions=restrictions,
        )

    @staticmethod
    def _get(store: dict[str, Json], obj_id: str, kind: str) -> Json:
        if obj_id not in store:
            raise _Error(404, f"No such {kind}: '{obj_id}'")
        return store[obj_id]

    @staticmethod
    def _page(items: list[Json], params: Json, url: str) -> Json:
        limit = int(params.get("limit", 10))
        items = sorted(items, key=lambda o: (o.get("created") or 0, o["id"]), reverse=True)
        after = params.get("starting_after")
        if after:
            ids = [o["id"] for o in items]
            items = items[ids.index(after) + 1 :]
        return {
            "object": "list",
            "url": url,
            "has_more": len(items) > limit,
            "data": items[:limit],
        }


class _Error(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@contextmanager
def demo_standin(db_url: str) -> Iterator[str]:
    """The offline-demo stand-in (demo.standin) over the database at `db_url`, seeded from it,
    on 127.0.0.1; yields the URL to put in STRIPE_API_BASE (browser journeys, AppTest)."""
    engine = make_engine(db_url)
    standin = StandIn(engine)
    standin.seed()
    server, url = start_in_thread(standin)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()
