"""The wire: what core.console.stripe_api sends to Stripe, with which Idempotency-Key, and what
it makes of Stripe's answers. Against a loopback fake (promotion codes, sessions, events,
endpoints),
localstripe (PaymentIntents, coupons) and the offline-demo stand-in, all on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import stripe
from sqlalchemy import Engine, func, select

from core import migrate
from core.auth.permissions import Actor
from core.console.promotions import (
    NewPromotionCode,
    create_promotion_code,
    list_promotion_codes,
    set_active,
)
from core.console.reconcile import reconcile
from core.console.stripe_api import (
    API_VERSION,
    StripeApi,
    StripeAuthError,
    StripeNotFound,
    StripeProblem,
    StripeRejected,
    StripeUnavailable,
    client_from_settings,
    new_token,
)
from core.db import make_engine, session_scope
from core.models import AuditEntry, Order, StripeAction
from core.settings import load_settings
from core.webhook.handlers import Context
from core.webhook.receive import apply_event
from demo.standin import StandIn, start_in_thread
from tests.support import stripe_objects as so
from tests.support.dashboard_server import free_port
from tests.support.stripe_standin import FakeStripe

ADMIN = Actor("alice", "admin")
KEY = "sk_test_wire_0123456789"
NOW = datetime.now(UTC)


@pytest.fixture
def fake(fake: FakeStripe) -> FakeStripe:
    fake.add_coupon(id="TENOFF", percent_off=10.0, duration="once")
    return fake


def api(url: str, **kwargs: float) -> StripeApi:
    return StripeApi(KEY, api_base=url, **kwargs)  # type: ignore[arg-type]


def new_code(code: str = "SPRING-25", **form: object) -> NewPromotionCode:
    return NewPromotionCode.parse({"code": code, "percent_off": "25", **form}, now=NOW)


# --- Exact parameters ---------------------------------------------------------------------------


def test_create_sends_exactly_the_current_api_shape(
    fake: FakeStripe, sqlite_engine: Engine
) -> None:
    expires = (NOW + timedelta(days=10)).replace(microsecond=0)
    new = NewPromotionCode.parse(
        {
            "code": "SUMMER_5",
            "amount_off": "5.00",
            "currency": "EUR",
            "duration": "repeating",
            "duration_in_months": "3",
            "max_redemptions": "100",
            "expires_at": expires,
            "first_time_only": True,
            "minimum_amount": "20",
        },
        now=NOW,
    )
    token = "form1234abcd"
    result = create_promotion_code(sqlite_engine, api(fake.url), ADMIN, new, token)

    coupon_call, code_call = fake.writes()
    assert coupon_call.path == "/v1/coupons"
    assert sorted(coupon_call.pairs) == sorted(
        [
            ("id", "SUMMER_5-form1234"),
            ("duration", "repeating"),
            ("duration_in_months", "3"),
            ("amount_off", "500"),
            ("currency", "eur"),
            ("name", "SUMMER_5"),
        ]
    )
    assert code_call.path == "/v1/promotion_codes"
    assert sorted(code_call.pairs) == sorted(
        [
            ("code", "SUMMER_5"),
            ("promotion[type]", "coupon"),
            ("promotion[coupon]", "SUMMER_5-form1234"),
            ("max_redemptions", "100"),
            ("expires_at", str(int(expires.timestamp()))),
            ("restrictions[first_time_transaction]", "true"),
            ("restrictions[minimum_amount]", "2000"),
            ("restrictions[minimum_amount_currency]", "eur"),
        ]
    )
    for call in (coupon_call, code_call):
        assert call.headers["stripe-version"] == API_VERSION == stripe.api_version
        assert call.headers["authorization"] == f"Bearer {KEY}"
        assert call.idempotency_key
    assert coupon_call.idempotency_key != code_call.idempotency_key
    assert result.result_id in fake.codes


def test_existing_coupon_is_named_under_promotion(fake: FakeStripe, sqlite_engine: Engine) -> None:
    new = NewPromotionCode.parse({"code": "VIP", "coupon_id": "TENOFF"}, now=NOW)
    create_promotion_code(sqlite_engine, api(fake.url), ADMIN, new, new_token())
    (call,) = fake.writes()
    assert sorted(call.pairs) == [
        ("code", "VIP"),
        ("promotion[coupon]", "TENOFF"),
        ("promotion[type]", "coupon"),
    ]


# --- Idempotency keys ---------------------------------------------------------------------------


def test_key_reused_on_retry_and_new_for_a_new_action(
    fake: FakeStripe, sqlite_engine: Engine
) -> None:
    client = api(fake.url)
    code = fake.add_code("AUTUMN", "TENOFF")
    fake.fail(f"/v1/promotion_codes/{code['id']}", 503, times=3)  # 1 try + 2 SDK retries
    token = new_token()
    with pytest.raises(StripeUnavailable):
        set_active(sqlite_engine, client, ADMIN, code["id"], False, token)
    first_keys = {r.idempotency_key for r in fake.writes()}
    assert len(fake.writes()) == 3 and len(first_keys) == 1  # the SDK retried with our key

    # The operator clicks again (a rerun of the same form): the same key, and it succeeds.
    set_active(sqlite_engine, client, ADMIN, code["id"], False, token)
    assert fake.writes()[-1].idempotency_key in first_keys
    assert fake.codes[code["id"]]["active"] is False

    # A double click after success sends nothing at all.
    again = set_active(sqlite_engine, client, ADMIN, code["id"], False, token)
    assert again.already_done and len(fake.writes()) == 4

    # Reactivating is a new action: a new key.
    set_active(sqlite_engine, client, ADMIN, code["id"], True, new_token())
    assert fake.writes()[-1].idempotency_key not in first_keys
    assert fake.codes[code["id"]]["active"] is True

    with session_scope(sqlite_engine, write=False) as session:
        actions = session.execute(select(StripeAction).order_by(StripeAction.id)).scalars().all()
        assert [(a.kind, a.status) for a in actions] == [
            ("promotion_code.deactivate", "succeeded"),
            ("promotion_code.activate", "succeeded"),
        ]
        assert actions[0].idempotency_key in first_keys
        assert actions[0].stripe_request_id and actions[0].stripe_request_id.startswith("req_")
        audited = session.execute(
            select(AuditEntry.action, AuditEntry.idempotency_key).order_by(AuditEntry.id)
        ).all()
        assert audited[0] == ("promotion_code.deactivate.failed", actions[0].idempotency_key)
        assert audited[1] == ("promotion_code.deactivate", actions[0].idempotency_key)


@pytest.mark.parametrize("sdk_retries", [2, 0])
def test_timeout_after_stripe_created_the_code_gives_one_code(
    fake: FakeStripe, sqlite_engine: Engine, sdk_retries: int
) -> None:
    """Stripe creates the code but answers after the client gave up. With SDK retries the retry
    carries the same key; without them the operator's retry does: one code either way."""
    client = StripeApi(KEY, api_base=fake.url, read_timeout=0.5, max_network_retries=sdk_retries)
    fake.slow_after_work("/v1/promotion_codes", 1.5)
    new = NewPromotionCode.parse({"code": "ONCE", "coupon_id": "TENOFF"}, now=NOW)
    token = new_token()
    if sdk_retries:
        result = create_promotion_code(sqlite_engine, client, ADMIN, new, token)
    else:
        with pytest.raises(StripeUnavailable):
            create_promotion_code(sqlite_engine, client, ADMIN, new, token)
        result = create_promotion_code(sqlite_engine, client, ADMIN, new, token)
    writes = fake.writes("/v1/promotion_codes")
    assert len(writes) == 2
    assert writes[0].idempotency_key == writes[1].idempotency_key
    assert [c["code"] for c in fake.codes.values()] == ["ONCE"]
    assert result.result_id == next(iter(fake.codes))


def test_a_rejected_action_gets_a_new_key_when_tried_again(
    fake: FakeStripe, sqlite_engine: Engine
) -> None:
    client = api(fake.url)
    new = NewPromotionCode.parse({"code": "LATER", "coupon_id": "NOT_YET"}, now=NOW)
    token = new_token()
    with pytest.raises(StripeRejected, match="No such coupon"):
        create_promotion_code(sqlite_engine, client, ADMIN, new, token)
    fake.add_coupon(id="NOT_YET")
    create_promotion_code(sqlite_engine, client, ADMIN, new, token)
    first, second = fake.writes()
    assert first.idempotency_key != second.idempotency_key
    assert [c["code"] for c in fake.codes.values()] == ["LATER"]


# --- Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "shown"),
    [
        (401, {"type": "invalid_request_error", "message": f"Invalid API Key provided: {KEY}"},
         StripeAuthError, "refused this console's API key"),
        (404, {"type": "invalid_request_error", "message": "No such promotion_code: 'x'"},
         StripeNotFound, "no such object"),
        (400, {"type": "invalid_request_error", "message": f"Bad value; key {KEY} leaked",
               "param": "code"}, StripeRejected, "(field code): Bad value; key [redacted] leaked"),
        (429, {"type": "rate_limit_error", "message": "Too many"}, StripeUnavailable,
         "limiting the request rate"),
        (500, {"type": "api_error", "message": "internal trace id 123"}, StripeUnavailable,
         "failed to answer properly"),
    ],
)  # fmt: skip
def test_errors_become_safe_domain_errors(
    status: int, body: dict[str, str], error: type[StripeProblem], shown: str
) -> None:
    fake = FakeStripe.start()
    try:
        fake.server.clear()
        fake.server.expect_request("/v1/coupons/x").respond_with_json(
            {"error": body}, status=status, headers={"Request-Id": "req_err1"}
        )
        client = StripeApi(KEY, api_base=fake.url, max_network_retries=0)
        with pytest.raises(error) as caught:
            client.retrieve_coupon("x")
    finally:
        fake.stop()
    assert shown in caught.value.message
    assert KEY not in str(caught.value) and "sk_test" not in str(caught.value)
    assert caught.value.request_id == "req_err1"


def test_unreachable_stripe_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = StripeApi(KEY, api_base=f"http://127.0.0.1:{port}", max_network_retries=0)
    with pytest.raises(StripeUnavailable, match="could not be reached"):
        client.retrieve_payment_intent("pi_x")


# --- Reading: auto-paging, shapes ---------------------------------------------------------------


def test_listing_pages_through_every_code(fake: FakeStripe) -> None:
    for n in range(250):
        fake.add_code(f"CODE{n:03d}", "TENOFF")
    codes = list_promotion_codes(api(fake.url), Actor("sam", "support"))
    assert sorted(c.code for c in codes) == sorted(f"CODE{n:03d}" for n in range(250))
    pages = [r for r in fake.requests if r.path == "/v1/promotion_codes"]
    assert len(pages) == 3
    cursors = [p.params.get("starting_after") for p in pages]
    assert cursors[0] is None and cursors[1] and cursors[2] and cursors[1] != cursors[2]
    assert all(p.params["limit"] == "100" for p in pages)
    assert all(p.params["expand"] == ["data.promotion.coupon"] for p in pages)
    assert codes[0].coupon is not None and codes[0].coupon.percent_off == 10.0


def test_settings_choose_the_real_key_or_the_standin() -> None:
    with_key = client_from_settings(load_settings(stripe_secret_key="sk_test_real_1234"))
    assert not with_key.is_standin
    standin = client_from_settings(load_settings(stripe_api_base="http://127.0.0.1:12111"))
    assert standin.is_standin
    with pytest.raises(StripeAuthError, match="not configured"):
        client_from_settings(load_settings())


# --- localstripe: PaymentIntents and coupons ----------------------------------------------------


@pytest.fixture(scope="module")
def localstripe_url() -> Iterator[str]:
    port = free_port()
    code = (
        "import aiohttp.web, localstripe.server; "
        f"aiohttp.web.run_app(localstripe.server.app, host='127.0.0.1', port={port}, print=None)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _intent(url: str, *, card: str | None) -> str:
    """A PaymentIntent on localstripe: paid with `card`, or never confirmed (None)."""
    raw = stripe.StripeClient(KEY, base_addresses={"api": url})
    params: dict[str, object] = {"amount": 2500, "currency": "usd"}
    if card is not None:
        method = raw.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        params.update(payment_method=method.id, confirm=True)
    return str(raw.v1.payment_intents.create(params=params).id)  # type: ignore[arg-type]


def test_payment_intents_read_from_localstripe(localstripe_url: str) -> None:
    client = api(localstripe_url)
    paid = client.retrieve_payment_intent(_intent(localstripe_url, card="4242424242424242"))
    assert paid.data["status"] == "succeeded" and paid.data["amount"] == 2500
    assert paid.data["latest_charge"]["amount_refunded"] == 0
    unpaid = client.retrieve_payment_intent(_intent(localstripe_url, card=None))
    assert unpaid.data["status"] == "requires_payment_method"
    with pytest.raises(StripeRejected, match="declined"):  # card 4000000000000341
        _intent_or_problem(localstripe_url, client)
    with pytest.raises(StripeNotFound):
        client.retrieve_payment_intent("pi_does_not_exist")


def _intent_or_problem(url: str, client: StripeApi) -> None:
    try:
        _intent(url, card="4000000000000341")
    except stripe.StripeError as exc:
        from core.console.stripe_api import translate

        raise translate(exc) from None


def test_coupons_created_on_localstripe(localstripe_url: str, sqlite_engine: Engine) -> None:
    client = api(localstripe_url)
    new = new_code("LS-CODE", duration="forever")
    coupon_id = "LS-CODE-abcdef12"
    params = new.coupon_params(coupon_id)
    assert params.pop("name") == "LS-CODE"  # localstripe 1.15 does not know coupon names
    reply = client.create_coupon(params, "idem-ls-1")
    assert reply.data["id"] == coupon_id
    stored = client.retrieve_coupon(coupon_id).data
    assert stored["percent_off"] == 25 and stored["duration"] == "forever"
    with pytest.raises(StripeRejected):  # localstripe refuses a coupon without terms
        client.create_coupon({"id": "EMPTY", "duration": "once"}, "idem-ls-2")


# --- The offline-demo stand-in ------------------------------------------------------------------


def test_standin_serves_codes_sessions_and_writes(sqlite_engine: Engine) -> None:
    with session_scope(sqlite_engine) as session:
        session.add(
            Order(
                checkout_session_id="cs_demo_1",
                payment_intent_id="pi_demo_1",
                amount_total=4200,
                currency="usd",
                status="paid",
                promotion_code="WELCOME10",
                paid_at=NOW,
                created_at=NOW - timedelta(minutes=5),
            )
        )
    standin = StandIn(sqlite_engine)
    standin.seed(NOW)
    server, url = start_in_thread(standin)
    try:
        client = StripeApi("sk_test_standin_offline_demo", api_base=url)
        codes = list_promotion_codes(client, ADMIN)
        assert [(c.code, c.times_redeemed) for c in codes] == [("WELCOME10", 1)]
        checkout = client.retrieve_checkout_session("cs_demo_1").data
        assert checkout["payment_status"] == "paid" and checkout["standin"] is True
        assert checkout["payment_intent"]["status"] == "succeeded"
        assert checkout["payment_intent"]["amount_received"] == 4200
        token = new_token()
        new = new_code("FRESH")
        created = create_promotion_code(sqlite_engine, client, ADMIN, new, token)
        again = create_promotion_code(sqlite_engine, client, ADMIN, new, token)
        assert again.already_done and again.result_id == created.result_id
        assert sum(1 for c in standin.codes.values() if c["code"] == "FRESH") == 1
        set_active(sqlite_engine, client, ADMIN, str(created.result_id), False, new_token())
        assert standin.codes[str(created.result_id)]["active"] is False
        with pytest.raises(StripeAuthError):
            StripeApi("sk_live_nope", api_base=url, max_network_retries=0).list_webhook_endpoints()
    finally:
        server.shutdown()
        server.server_close()
    with session_scope(sqlite_engine, write=False) as session:
        assert session.execute(select(func.count()).select_from(StripeAction)).scalar_one() == 3


def test_standin_events_let_an_empty_database_catch_up(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """The stand-in serves the events of one database; reconciling a second, empty one from it
    applies every one of them, through its pages (250 events, pages of 100)."""
    ctx = Context()
    with session_scope(sqlite_engine) as session:
        for n in range(125):
            checkout = so.checkout_session(amount_total=100 + n)
            for kind in ("checkout.session.completed", "payment_intent.succeeded"):
                obj = (
                    checkout
                    if kind.startswith("checkout")
                    else so.payment_intent(intent_id=checkout["payment_intent"], amount=100 + n)
                )
                apply_event(session, so.event(kind, obj), ctx, "webhook")
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    migrate.upgrade(empty)
    server, url = start_in_thread(StandIn(sqlite_engine))
    try:
        report = reconcile(empty, StripeApi(KEY, api_base=url), ctx, Actor("cron"))
        again = reconcile(empty, StripeApi(KEY, api_base=url), ctx, Actor("cron"))
    finally:
        server.shutdown()
        server.server_close()
    assert report.events_seen == 250 and len(report.applied) == 250 and not report.failed
    assert report.sessions_seen == 125 and report.sessions_repaired == []
    assert again.nothing_to_do
    with session_scope(empty, write=False) as session:
        paid = session.execute(
            select(func.count()).select_from(Order).where(Order.status == "fulfilled")
        ).scalar_one()
    empty.dispose()
    assert paid == 125


def test_two_concurrent_clicks_make_one_code(engine: Engine, fake: FakeStripe) -> None:
    """Two reruns of one form submitting at the same moment share the stored key: Stripe sees
    the same Idempotency-Key twice and makes one code."""
    new = NewPromotionCode.parse({"code": "TWICE", "coupon_id": "TENOFF"}, now=NOW)
    token = new_token()
    barrier = threading.Barrier(2)
    results: list[str | None] = []

    def click() -> None:
        client = api(fake.url)
        barrier.wait()
        results.append(create_promotion_code(engine, client, ADMIN, new, token).result_id)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2 and results[0] == results[1]
    assert [c["code"] for c in fake.codes.values()] == ["TWICE"]
    assert len({w.idempotency_key for w in fake.writes()}) == 1
