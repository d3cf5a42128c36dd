"""A local Stripe stand-in for the offline demo (never for production: settings refuse
STRIPE_API_BASE there).

It answers Stripe-shaped JSON for what the console reads and writes: promotion codes and
coupons (kept in memory, seeded from the codes our orders used), Checkout Sessions and
PaymentIntents (derived from the `orders` table, live), events (from `stripe_events`) and one
webhook endpoint. Every object carries `"standin": true` and every answer a `Stripe-Standin`
header, so nothing can pass it off as the real account. It honours Idempotency-Key like Stripe:
the same key replays the first answer, the same key with other parameters is an error.

Run it with `python -m core standin`; the dashboard finds it through STRIPE_API_BASE.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.console.stripe_api import API_VERSION
from core.db import session_scope
from core.models import Order, PaymentAttempt, StripeEvent
from core.webhook.handlers import HANDLERS

log = logging.getLogger(__name__)

MARKER = {"standin": True}
MAX_LIMIT = 100
Json = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message}}


def decode_form(pairs: list[tuple[str, str]]) -> Json:
    """Stripe's bracketed form encoding (`a[b][0]=x`) back into nested dicts and lists."""
    root: Json = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    result: Json = _lists(root)
    return result


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {k: _lists(v) for k, v in node.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    return node


def _bool(value: Any) -> bool | None:
    if value in (True, "true"):
        return True
    if value in (False, "false"):
        return False
    return None


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid integer: {name}") from None


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _expands(params: Json) -> set[str]:
    raw = params.get("expand") or []
    return {str(x) for x in (raw if isinstance(raw, list) else [raw])}


@dataclass
class _Idem:
    fingerprint: str
    status: int
    body: Json


class StandIn:
    """The state and the routes; `handle` is pure request-in, response-out (no sockets)."""

    def __init__(
        self, engine: Engine, *, endpoint_url: str = "http://127.0.0.1:8000/webhooks/stripe"
    ):
        self.engine = engine
        self.endpoint_url = endpoint_url
        self.lock = threading.Lock()
        self.coupons: dict[str, Json] = {}
        self.codes: dict[str, Json] = {}
        self.idempotency: dict[str, _Idem] = {}
        self._ids = itertools.count(1)
        self._requests = itertools.count(1)

    # --- Seeding ---------------------------------------------------------------------------------

    def seed(self, now: datetime | None = None) -> None:
        """Promotion codes for every code our orders and attempts used, with times redeemed
        counted from our paid orders, so the stand-in agrees with the demo data."""
        now = now or datetime.now(UTC)
        with session_scope(self.engine, write=False) as session:
            used = dict(
                session.execute(
                    select(Order.promotion_code, func.count(Order.paid_at))
                    .where(Order.promotion_code.is_not(None))
                    .group_by(Order.promotion_code)
                ).all()
            )
            for (code,) in session.execute(
                select(PaymentAttempt.promotion_code)
                .where(PaymentAttempt.promotion_code.is_not(None))
                .distinct()
            ).all():
                used.setdefault(code, 0)
        for index, (raw, redeemed) in enumerate(sorted(used.items(), key=lambda kv: str(kv[0]))):
            value = str(raw)
            percent = (10, 15, 20, 25, 50)[index % 5]
            coupon = self._coupon(
                {"id": f"standin-{index + 1}", "percent_off": percent, "duration": "once"}
            )
            code_id = value if value.startswith("promo_") else f"promo_standin{index + 1:04d}"
            text = value[6:].upper()[:16] if value.startswith("promo_") else value
            limit = None
            expires = None
            if index % 3 == 0:  # some codes close to their limit, some close to expiry
                limit = int(redeemed) + 3
            if index % 4 == 1:
                expires = _ts(now + timedelta(days=3 + index))
            self.codes[code_id] = {
                "id": code_id,
                "object": "promotion_code",
                "active": True,
                "code": text,
                "created": _ts(now - timedelta(days=90)),
                "customer": None,
                "customer_account": None,
                "expires_at": expires,
                "livemode": False,
                "max_redemptions": limit,
                "metadata": {},
                "promotion": {"type": "coupon", "coupon": coupon["id"]},
                "restrictions": {
                    "first_time_transaction": index % 5 == 2,
                    "minimum_amount": None,
                    "minimum_amount_currency": None,
                },
                "times_redeemed": int(redeemed),
                **MARKER,
            }

    def _coupon(self, params: Json) -> Json:
        coupon_id = str(params.get("id") or f"standin_coupon_{next(self._ids)}")
        if coupon_id in self.coupons:
            raise ApiError(400, "Coupon already exists.", kind="invalid_request_error")
        percent = params.get("percent_off")
        amount = params.get("amount_off")
        if (percent is None) == (amount is None):
            raise ApiError(400, "Exactly one of percent_off and amount_off is required.")
        if amount is not None and not params.get("currency"):
            raise ApiError(400, "amount_off requires currency.")
        duration = params.get("duration") or "once"
        coupon: Json = {
            "id": coupon_id,
            "object": "coupon",
            "amount_off": _int(amount, "amount_off") if amount is not None else None,
            "created": int(time.time()),
            "currency": params.get("currency"),
            "duration": duration,
            "duration_in_months": _int(params["duration_in_months"], "duration_in_months")
            if params.get("duration_in_months")
            else None,
            "livemode": False,
            "max_redemptions": None,
            "metadata": {},
            "name": params.get("name"),
            "percent_off": float(percent) if percent is not None else None,
            "redeem_by": None,
            "times_redeemed": 0,
            "valid": True,
            **MARKER,
        }
        self.coupons[coupon_id] = coupon
        return coupon

    # --- Request handling -----------------------------------------------------------------------

    def handle(
        self, method: str, path: str, params: Json, headers: dict[str, str]
    ) -> tuple[int, Json, dict[str, str]]:
        out_headers = {
            "Request-Id": f"req_standin_{next(self._requests):08d}",
            "Stripe-Standin": "true",
            "Stripe-Version": API_VERSION,
        }
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer sk_test_"):
            return (
                401,
                ApiError(401, "Invalid API key.", kind="invalid_request_error").body,
                out_headers,
            )
        key = headers.get("idempotency-key")
        try:
            with self.lock:
                if method == "POST" and key:
                    fingerprint = hashlib.sha256(
                        json.dumps([path, params], sort_keys=True).encode()
                    ).hexdigest()
                    seen = self.idempotency.get(key)
                    if seen is not None:
                        if seen.fingerprint != fingerprint:
                            raise ApiError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with.",
                                kind="idempotency_error",
                            )
                        out_headers["Idempotent-Replayed"] = "true"
                        return seen.status, seen.body, out_headers
                    try:
                        status, body = 200, self._route(method, path, params)
                    except ApiError as exc:
                        status, body = exc.status, exc.body
                    self.idempotency[key] = _Idem(fingerprint, status, body)
                    return status, body, out_headers
                return 200, self._route(method, path, params), out_headers
        except ApiError as exc:
            return exc.status, exc.body, out_headers

    def _route(self, method: str, path: str, params: Json) -> Json:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "v1":
            raise ApiError(404, "Unrecognized request URL.")
        resource, rest = parts[1], parts[2:]
        if resource == "checkout" and rest[:1] == ["sessions"]:
            resource, rest = "checkout/sessions", rest[1:]
        routes: dict[tuple[str, str, int], Callable[..., Json]] = {
            ("GET", "promotion_codes", 0): self._list_codes,
            ("POST", "promotion_codes", 0): self._create_code,
            ("GET", "promotion_codes", 1): self._get_code,
            ("POST", "promotion_codes", 1): self._update_code,
            ("GET", "coupons", 0): lambda p: self._page(list(self.coupons.values()), p),
            ("POST", "coupons", 0): self._coupon,
            ("GET", "coupons", 1): lambda p, i: self._found(self.coupons.get(i), "coupon", i),
            ("GET", "checkout/sessions", 0): self._list_sessions,
            ("GET", "checkout/sessions", 1): self._get_session,
            ("GET", "payment_intents", 1): self._get_intent,
            ("GET", "events", 0): self._list_events,
            ("GET", "events", 1): self._get_event,
            ("GET", "webhook_endpoints", 0): self._list_endpoints,
        }
        route = routes.get((method, resource, len(rest)))
        if route is None:
            raise ApiError(404, f"The stand-in does not implement {method} {path}.")
        return route(params, *rest)

    @staticmethod
    def _found(obj: Json | None, kind: str, obj_id: str) -> Json:
        if obj is None:
            raise ApiError(404, f"No such {kind}: '{obj_id}'", kind="invalid_request_error")
        return obj

    @staticmethod
    def _page(items: list[Json], params: Json, url: str = "/v1/list") -> Json:
        """Newest first, cursor after `starting_after`, like Stripe's lists."""
        limit = min(max(_int(params.get("limit", 10), "limit"), 1), MAX_LIMIT)
        items = sorted(items, key=lambda o: (o.get("created") or 0, o["id"]), reverse=True)
        after = params.get("starting_after")
        if after:
            ids = [o["id"] for o in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        return {
            "object": "list",
            "url": url,
            "has_more": len(items) > limit,
            "data": items[:limit],
            **MARKER,
        }

    # Promotion codes

    def _with_coupon(self, code: Json, expand: bool) -> Json:
        if not expand:
            return code
        coupon = self.coupons.get(code["promotion"]["coupon"])
        return {**code, "promotion": {**code["promotion"], "coupon": coupon}}

    def _list_codes(self, params: Json) -> Json:
        items = list(self.codes.values())
        if "code" in params:
            items = [c for c in items if c["code"].lower() == str(params["code"]).lower()]
        if _bool(params.get("active")) is not None:
            items = [c for c in items if c["active"] == _bool(params["active"])]
        page = self._page(items, params, "/v1/promotion_codes")
        expand = "data.promotion.coupon" in _expands(params)
        page["data"] = [self._with_coupon(c, expand) for c in page["data"]]
        return page

    def _get_code(self, params: Json, code_id: str) -> Json:
        code = self._found(self.codes.get(code_id), "promotion code", code_id)
        return self._with_coupon(code, "promotion.coupon" in _expands(params))

    def _create_code(self, params: Json) -> Json:
        promotion = params.get("promotion")
        if not isinstance(promotion, dict) or promotion.get("type") != "coupon":
            raise ApiError(400, "Missing required param: promotion[type].")
        coupon_id = promotion.get("coupon")
        if coupon_id not in self.coupons:
            raise ApiError(400, f"No such coupon: '{coupon_id}'")
        text = str(params.get("code") or f"CODE{next(self._ids)}")
        if any(c["active"] and c["code"].lower() == text.lower() for c in self.codes.values()):
            raise ApiError(400, "An active promotion code with this code already exists.")
        restrictions = params.get("restrictions") or {}
        code_id = f"promo_standin{next(self._ids):06d}{int(time.time()) % 10000:04d}"
        code = {
            "id": code_id,
            "object": "promotion_code",
            "active": _bool(params.get("active")) is not False,
            "code": text,
            "created": int(time.time()),
            "customer": params.get("customer"),
            "customer_account": None,
            "expires_at": _int(params["expires_at"], "expires_at")
            if params.get("expires_at")
            else None,
            "livemode": False,
            "max_redemptions": _int(params["max_redemptions"], "max_redemptions")
            if params.get("max_redemptions")
            else None,
            "metadata": {},
            "promotion": {"type": "coupon", "coupon": coupon_id},
            "restrictions": {
                "first_time_transaction": _bool(restrictions.get("first_time_transaction")) is True,
                "minimum_amount": _int(restrictions["minimum_amount"], "minimum_amount")
                if restrictions.get("minimum_amount")
                else None,
                "minimum_amount_currency": restrictions.get("minimum_amount_currency"),
            },
            "times_redeemed": 0,
            **MARKER,
        }
        self.codes[code_id] = code
        return code

    def _update_code(self, params: Json, code_id: str) -> Json:
        code = self._found(self.codes.get(code_id), "promotion code", code_id)
        active = _bool(params.get("active"))
        if active is not None:
            if active and any(
                c["active"] and c["id"] != code_id and c["code"].lower() == code["code"].lower()
                for c in self.codes.values()
            ):
                raise ApiError(400, "An active promotion code with this code already exists.")
            code["active"] = active
        return code

    # Checkout Sessions and PaymentIntents, derived from our orders

    def _order(self, session: Session, **where: str) -> Order | None:
        column, value = next(iter(where.items()))
        return session.execute(
            select(Order).where(getattr(Order, column) == value).limit(1)
        ).scalar_one_or_none()

    def _charge(self, order: Order) -> Json:
        return {
            "id": f"ch_{(order.payment_intent_id or str(order.id))[3:]}",
            "object": "charge",
            "amount": order.amount_total,
            "amount_refunded": order.amount_refunded,
            "currency": order.currency,
            "disputed": order.disputed_at is not None,
            "paid": order.paid_at is not None,
            "payment_intent": order.payment_intent_id,
            "refunded": order.amount_refunded >= order.amount_total > 0,
            "status": "succeeded" if order.paid_at else "failed",
            **MARKER,
        }

    def _intent(self, order: Order, expand_charge: bool) -> Json:
        paid = order.paid_at is not None
        charge = self._charge(order)
        return {
            "id": order.payment_intent_id,
            "object": "payment_intent",
            "amount": order.amount_total,
            "amount_received": order.amount_total if paid else 0,
            "currency": order.currency,
            "created": _ts(order.created_at),
            "customer": order.customer_id,
            "latest_charge": charge if expand_charge else charge["id"],
            "livemode": order.livemode,
            "metadata": {},
            "status": "succeeded"
            if paid
            else ("canceled" if order.expired_at else "requires_payment_method"),
            **MARKER,
        }

    def _session(self, order: Order, expand: set[str]) -> Json:
        paid = order.paid_at is not None
        status = "complete" if paid else ("expired" if order.expired_at else "open")
        intent: Any = order.payment_intent_id
        if "payment_intent" in expand and order.payment_intent_id:
            intent = self._intent(order, "payment_intent.latest_charge" in expand)
        return {
            "id": order.checkout_session_id,
            "object": "checkout.session",
            "amount_subtotal": order.amount_total,
            "amount_total": order.amount_total,
            "created": _ts(order.created_at),
            "currency": order.currency,
            "customer": order.customer_id,
            "customer_details": {"email": order.customer_email},
            "discounts": [{"coupon": None, "promotion_code": order.promotion_code}]
            if order.promotion_code
            else [],
            "livemode": order.livemode,
            "metadata": {"order_id": str(order.id)},
            "mode": "payment",
            "payment_intent": intent,
            "payment_status": "paid" if paid else "unpaid",
            "status": status,
            **MARKER,
        }

    def _get_session(self, params: Json, session_id: str) -> Json:
        with session_scope(self.engine, write=False) as session:
            order = self._order(session, checkout_session_id=session_id)
            if order is None:
                raise ApiError(404, f"No such checkout.session: '{session_id}'")
            return self._session(order, _expands(params))

    def _get_intent(self, params: Json, intent_id: str) -> Json:
        with session_scope(self.engine, write=False) as session:
            order = self._order(session, payment_intent_id=intent_id)
            if order is None:
                raise ApiError(404, f"No such payment_intent: '{intent_id}'")
            return self._intent(order, "latest_charge" in _expands(params))

    def _list_sessions(self, params: Json) -> Json:
        limit = min(max(_int(params.get("limit", 10), "limit"), 1), MAX_LIMIT)
        query = select(Order).where(Order.checkout_session_id.is_not(None))
        created = params.get("created")
        if isinstance(created, dict) and created.get("gte"):
            since = datetime.fromtimestamp(_int(created["gte"], "created[gte]"), UTC)
            query = query.where(Order.created_at >= since)
        if params.get("status") == "complete":
            query = query.where(Order.paid_at.is_not(None))
        with session_scope(self.engine, write=False) as session:
            after = params.get("starting_after")
            if after:
                cursor = self._order(session, checkout_session_id=str(after))
                if cursor is None:
                    raise ApiError(400, "starting_after is not a known session.")
                query = query.where(
                    (Order.created_at < cursor.created_at)
                    | ((Order.created_at == cursor.created_at) & (Order.id < cursor.id))
                )
            rows = list(
                session.execute(
                    query.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
                ).scalars()
            )
            data = [self._session(o, set()) for o in rows[:limit]]
        return {
            "object": "list",
            "url": "/v1/checkout/sessions",
            "has_more": len(rows) > limit,
            "data": data,
            **MARKER,
        }

    # Events and endpoints

    @staticmethod
    def _event(row: StripeEvent) -> Json:
        payload = dict(row.payload)
        return {
            **payload,
            "pending_webhooks": 1 if row.status == "failed" else 0,
            **MARKER,
        }

    def _list_events(self, params: Json) -> Json:
        limit = min(max(_int(params.get("limit", 10), "limit"), 1), MAX_LIMIT)
        query = select(StripeEvent).where(~StripeEvent.id.startswith("evt_reconcile_"))
        created = params.get("created")
        if isinstance(created, dict) and created.get("gte"):
            since = datetime.fromtimestamp(_int(created["gte"], "created[gte]"), UTC)
            query = query.where(StripeEvent.created >= since)
        if _bool(params.get("delivery_success")) is False:
            query = query.where((StripeEvent.status == "failed") | (StripeEvent.deliveries > 1))
        if params.get("type"):
            query = query.where(StripeEvent.type == str(params["type"]))
        with session_scope(self.engine, write=False) as session:
            after = params.get("starting_after")
            if after:
                cursor = session.get(StripeEvent, str(after))
                if cursor is None:
                    raise ApiError(400, "starting_after is not a known event.")
                query = query.where(
                    (StripeEvent.created < cursor.created)
                    | ((StripeEvent.created == cursor.created) & (StripeEvent.id < cursor.id))
                )
            rows = list(
                session.execute(
                    query.order_by(StripeEvent.created.desc(), StripeEvent.id.desc()).limit(
                        limit + 1
                    )
                ).scalars()
            )
            data = [self._event(r) for r in rows[:limit]]
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": len(rows) > limit,
            "data": data,
            **MARKER,
        }

    def _get_event(self, params: Json, event_id: str) -> Json:
        with session_scope(self.engine, write=False) as session:
            row = session.get(StripeEvent, event_id)
            if row is None:
                raise ApiError(404, f"No such event: '{event_id}'")
            return self._event(row)

    def _list_endpoints(self, params: Json) -> Json:
        endpoint: Json = {
            "id": "we_standin_local",
            "object": "webhook_endpoint",
            "api_version": API_VERSION,
            "application": None,
            "created": int(time.time()) - 90 * 86400,
            "description": "Local receiver (stand-in)",
            "enabled_events": sorted(HANDLERS),
            "livemode": False,
            "metadata": {},
            "status": "enabled",
            "url": self.endpoint_url,
            **MARKER,
        }
        return self._page([endpoint], params, "/v1/webhook_endpoints")


# --- The HTTP server ----------------------------------------------------------------------------


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "StripeStandIn/1"

        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            pairs = parse_qsl(url.query, keep_blank_values=True)
            if method == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                pairs += parse_qsl(body, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, payload, out = standin.handle(method, url.path, decode_form(pairs), headers)
            except Exception:  # a stand-in bug answers like Stripe's own 500s, never a hang-up
                log.exception("standin: %s %s failed", method, url.path)
                status, out = 500, {"Stripe-Standin": "true"}
                payload = {"error": {"type": "api_error", "message": "Stand-in error."}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in out.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_DELETE(self) -> None:
            self._answer("DELETE")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("standin: " + format, *args)

    return Handler


def make_server(standin: StandIn, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threaded HTTP server for `standin` on `host:port` (port 0: any free port)."""
    server = ThreadingHTTPServer((host, port), _handler_for(standin))
    server.daemon_threads = True
    return server


def start_in_thread(standin: StandIn, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Serve in a daemon thread; returns the server (call `shutdown()`) and its base URL."""
    server = make_server(standin, host)
    thread = threading.Thread(target=server.serve_forever, name="stripe-standin", daemon=True)
    thread.start()
    port = server.server_address[1]
    return server, f"http://{host}:{port}"
