"""Signature verification: every forged, tampered, replayed, stale, future-dated or malformed
delivery is answered 4xx with its exact reason and leaves nothing but its delivery row; the
legitimate variants Stripe really sends are accepted.

Every case is a real body signed with real HMACs (core.webhook.signature.sign mirrors Stripe's
scheme; a differential test checks it against stripe-python's own WebhookSignature)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from sqlalchemy import Engine, func, select

from core.models import (
    Fulfillment,
    Order,
    OrderTransition,
    PaymentAttempt,
    StripeEvent,
    WebhookDelivery,
)
from core.webhook import signature
from core.webhook.handlers import Context
from core.webhook.receive import receive
from core.webhook.signature import REASONS, Rejection, compute_signature, sign, verify
from tests.conftest import OLD_SECRET, SECRET
from tests.support import stripe_objects as so

TOLERANCE = 300
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
SECRETS = [SECRET]


def paid_session_event() -> dict[str, Any]:
    """A real-shaped, paid checkout.session.completed: accepted, it would create an order."""
    return so.event("checkout.session.completed", so.checkout_session(), created=T - 5)


def body_of(evt: Any) -> bytes:
    return json.dumps(evt, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Delivery:
    payload: bytes
    header: str | None


def signed_at(payload: bytes, ts: int = T, secret: str = SECRET) -> Delivery:
    return Delivery(payload, sign(payload, secret, ts))


def v1(payload: bytes, ts: int = T, secret: str = SECRET) -> str:
    return compute_signature(secret, ts, payload)


def _valid() -> Delivery:
    return signed_at(body_of(paid_session_event()))


def _tampered_body() -> Delivery:
    evt = paid_session_event()
    good = signed_at(body_of(evt))
    evt["data"]["object"]["amount_total"] = 1  # the attacker lowers the price, keeps the header
    return Delivery(body_of(evt), good.header)


def _tampered_timestamp() -> Delivery:
    payload = body_of(paid_session_event())
    return Delivery(payload, f"t={T + 1},v1={v1(payload, T)}")


def _other_body() -> Delivery:
    other = body_of(paid_session_event())
    return Delivery(body_of(paid_session_event()), f"t={T},v1={v1(other)}")


def _with_header(make: Callable[[bytes], str | None]) -> Callable[[], Delivery]:
    def build() -> Delivery:
        payload = body_of(paid_session_event())
        return Delivery(payload, make(payload))

    return build


def _signed_body(make: Callable[[], bytes], ts: int = T) -> Callable[[], Delivery]:
    return lambda: signed_at(make(), ts)


def _event_with(**changes: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        evt = paid_session_event()
        for key, value in changes.items():
            if value is _DROP:
                del evt[key]
            else:
                evt[key] = value
        return body_of(evt)

    return make


_DROP = object()


def _thin_event() -> bytes:
    # The shape of a Stripe "thin" event (API v2): no data.object, a related_object instead.
    return body_of(
        {
            "id": "evt_test_65R9Ijk8BS3AB0bDcmU16R9Ijk8BSuQ1R1rW2Q3tiG4",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": "2026-11-23T12:00:00.000Z",
            "related_object": {
                "id": "mtr_test_61R9IiGwcwkjhdxcR41R9Ijk8BS",
                "type": "billing.meter",
                "url": "/v1/billing/meters/mtr_test_61R9IiGwcwkjhdxcR41R9Ijk8BS",
            },
        }
    )


def _charge_object() -> bytes:
    return body_of(so.charge())  # a bare charge, not wrapped in an event


def _huge_body() -> bytes:
    evt = paid_session_event()
    evt["data"]["object"]["metadata"] = {"padding": "x" * (signature.MAX_BODY_BYTES + 1)}
    return body_of(evt)


def _no_data_object() -> bytes:
    evt = paid_session_event()
    evt["data"] = {"previous_attributes": {}}
    return body_of(evt)


# id, delivery builder, seconds between signing and receipt, expected reason, expected status
REJECTED: list[tuple[str, Callable[[], Delivery], int, str, int]] = [
    (
        "missing header",
        lambda: Delivery(body_of(paid_session_event()), None),
        0,
        "missing_header",
        400,
    ),
    ("empty header", _with_header(lambda _p: ""), 0, "missing_header", 400),
    ("blank header", _with_header(lambda _p: "   "), 0, "missing_header", 400),
    ("garbage header", _with_header(lambda _p: "garbage"), 0, "malformed_header", 400),
    (
        "non-ASCII signature",
        _with_header(lambda p: f"t={T},v1={v1(p)[:-1]}é"),
        0,
        "malformed_header",
        400,
    ),
    (
        "non-ASCII timestamp digits",
        _with_header(lambda p: f"t=١٧٠٠,v1={v1(p)}"),
        0,
        "malformed_header",
        400,
    ),
    ("t without v1", _with_header(lambda _p: f"t={T}"), 0, "no_v1_signature", 400),
    ("v0 only", _with_header(lambda p: f"t={T},v0={v1(p)}"), 0, "no_v1_signature", 400),
    ("v1 without t", _with_header(lambda p: f"v1={v1(p)}"), 0, "malformed_header", 400),
    ("t not a number", _with_header(lambda p: f"t=now,v1={v1(p)}"), 0, "malformed_header", 400),
    ("negative t", _with_header(lambda p: f"t=-{T},v1={v1(p)}"), 0, "malformed_header", 400),
    ("duplicate t", _with_header(lambda p: f"t={T},t={T},v1={v1(p)}"), 0, "malformed_header", 400),
    ("item without =", _with_header(lambda p: f"t={T},v1,{v1(p)}"), 0, "malformed_header", 400),
    (
        "huge header",
        _with_header(lambda p: f"t={T},v1={v1(p)}" + ",v1=00" * 2000),
        0,
        "malformed_header",
        400,
    ),
    ("empty v1", _with_header(lambda _p: f"t={T},v1="), 0, "no_matching_signature", 400),
    (
        "wrong secret",
        _with_header(lambda p: sign(p, "whsec_attacker_guess", T)),
        0,
        "no_matching_signature",
        400,
    ),
    (
        "signed with the body only",
        _with_header(lambda p: f"t={T},v1={hashlib.sha256(p).hexdigest()}"),
        0,
        "no_matching_signature",
        400,
    ),
    (
        "uppercase hex signature",
        _with_header(lambda p: f"t={T},v1={v1(p).upper()}"),
        0,
        "no_matching_signature",
        400,
    ),
    ("tampered body", _tampered_body, 0, "no_matching_signature", 400),
    ("tampered timestamp", _tampered_timestamp, 0, "no_matching_signature", 400),
    ("signature of another body", _other_body, 0, "no_matching_signature", 400),
    ("timestamp 301 s old", _signed_body(_event_with(), T - 301), 0, "timestamp_too_old", 400),
    ("timestamp 0", _signed_body(_event_with(), 0), 0, "timestamp_too_old", 400),
    (
        "timestamp 301 s in future",
        _signed_body(_event_with(), T + 301),
        0,
        "timestamp_in_future",
        400,
    ),
    ("replayed 10 min later", _valid, 600, "timestamp_too_old", 400),
    (
        "non-UTF-8 body, signed",
        _signed_body(lambda: b'{"id":"evt_\xff\xfe"}'),
        0,
        "body_not_utf8",
        400,
    ),
    ("invalid JSON, signed", _signed_body(lambda: b'{"id": "evt_1", '), 0, "invalid_json", 400),
    (
        "UTF-8 BOM before JSON, signed",
        _signed_body(lambda: b"\xef\xbb\xbf" + body_of(paid_session_event())),
        0,
        "invalid_json",
        400,
    ),
    (
        "JSON nested too deep, signed",
        _signed_body(lambda: b"[" * 100_000 + b"]" * 100_000),
        0,
        "invalid_json",
        400,
    ),
    ("empty body, signed", _signed_body(lambda: b""), 0, "invalid_json", 400),
    ("JSON array", _signed_body(lambda: body_of([paid_session_event()])), 0, "not_an_event", 400),
    ("JSON null", _signed_body(lambda: b"null"), 0, "not_an_event", 400),
    ("object is not event", _signed_body(_charge_object), 0, "not_an_event", 400),
    (
        "object field says charge",
        _signed_body(_event_with(object="charge")),
        0,
        "not_an_event",
        400,
    ),
    (
        "id not evt_",
        _signed_body(_event_with(id="ch_3MmlLrLkdIwHu7ix0snN0B15")),
        0,
        "not_an_event",
        400,
    ),
    ("id missing", _signed_body(_event_with(id=_DROP)), 0, "not_an_event", 400),
    (
        "type not a string",
        _signed_body(_event_with(type=["checkout.session.completed"])),
        0,
        "not_an_event",
        400,
    ),
    (
        "created as a string",
        _signed_body(_event_with(created="1700000000")),
        0,
        "not_an_event",
        400,
    ),
    ("created beyond year 9999", _signed_body(_event_with(created=10**20)), 0, "not_an_event", 400),
    ("created negative", _signed_body(_event_with(created=-1)), 0, "not_an_event", 400),
    ("created as a boolean", _signed_body(_event_with(created=True)), 0, "not_an_event", 400),
    ("livemode as a string", _signed_body(_event_with(livemode="false")), 0, "not_an_event", 400),
    ("no data.object", _signed_body(_no_data_object), 0, "not_an_event", 400),
    ("thin v2 event", _signed_body(_thin_event), 0, "unsupported_event_format", 400),
    ("body over 256 KiB, signed", _signed_body(_huge_body), 0, "body_too_large", 413),
]


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (
                WebhookDelivery,
                StripeEvent,
                Order,
                OrderTransition,
                Fulfillment,
                PaymentAttempt,
            )
        }


def deliveries(engine: Engine) -> list[WebhookDelivery]:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def context(at: datetime = NOW) -> Context:
    return Context(clock=lambda: at)


def test_the_table_is_large_and_covers_every_reason() -> None:
    assert len({case[0] for case in REJECTED}) == len(REJECTED) >= 20
    assert {case[3] for case in REJECTED} == set(REASONS)


def deliver_rejected(
    engine: Engine,
    build: Callable[[], Delivery],
    delay: int,
    reason: str,
    status: int,
    remote_addr: str = "192.0.2.7",
) -> WebhookDelivery:
    delivery = build()
    outcome = receive(
        engine,
        delivery.payload,
        delivery.header,
        secrets=SECRETS,
        tolerance=TOLERANCE,
        ctx=context(NOW + timedelta(seconds=delay)),
        remote_addr=remote_addr,
    )
    assert (outcome.status, outcome.result, outcome.reason) == (status, "rejected", reason)
    assert 400 <= outcome.status < 500
    assert outcome.body() == {"result": "rejected", "reason": reason}
    row = deliveries(engine)[-1]
    assert (row.verified, row.rejection_reason, row.http_status, row.outcome) == (
        False,
        reason,
        status,
        "rejected",
    )
    assert row.event_id is None and row.event_type is None
    assert row.remote_addr == remote_addr
    assert row.body_bytes == len(delivery.payload)
    return row


def only_deliveries(count: int) -> dict[str, int]:
    return {
        "webhook_deliveries": count,
        "stripe_events": 0,
        "orders": 0,
        "order_transitions": 0,
        "fulfillments": 0,
        "payment_attempts": 0,
    }


@pytest.mark.parametrize(
    ("build", "delay", "reason", "status"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTED],
)
def test_rejected_delivery_leaves_only_its_delivery_row(
    sqlite_engine: Engine, build: Callable[[], Delivery], delay: int, reason: str, status: int
) -> None:
    deliver_rejected(sqlite_engine, build, delay, reason, status)
    assert table_counts(sqlite_engine) == only_deliveries(1)


@pytest.mark.postgres
def test_every_rejection_on_postgres(pg_engine: Engine) -> None:
    """The same table against PostgreSQL, in one database (one per case would be slow). One
    source address per case: each is then the first of its minute, kept as a sample."""
    for number, (_name, build, delay, reason, status) in enumerate(REJECTED, start=1):
        deliver_rejected(pg_engine, build, delay, reason, status, f"192.0.2.{number}")
        assert table_counts(pg_engine) == only_deliveries(number)


@pytest.mark.parametrize(
    ("build", "delay", "reason", "status"), [pytest.param(*c[1:], id=c[0]) for c in REJECTED]
)
def test_verify_raises_only_rejections(
    build: Callable[[], Delivery], delay: int, reason: str, status: int
) -> None:
    delivery = build()
    with pytest.raises(Rejection) as caught:
        verify(delivery.payload, delivery.header, SECRETS, TOLERANCE, now=T + delay)
    assert (caught.value.reason, caught.value.status) == (reason, status)
    assert str(caught.value) == REASONS[reason]


def test_a_replayed_delivery_is_refused_after_the_original_was_applied(engine: Engine) -> None:
    delivery = _valid()
    first = receive(
        engine,
        delivery.payload,
        delivery.header,
        secrets=SECRETS,
        tolerance=TOLERANCE,
        ctx=context(),
    )
    replay = receive(
        engine,
        delivery.payload,
        delivery.header,
        secrets=SECRETS,
        tolerance=TOLERANCE,
        ctx=context(NOW + timedelta(minutes=10)),
    )
    assert (first.status, first.result) == (200, "processed")
    assert (replay.status, replay.reason) == (400, "timestamp_too_old")
    counts = table_counts(engine)
    assert (counts["webhook_deliveries"], counts["stripe_events"], counts["fulfillments"]) == (
        2,
        1,
        1,
    )
    with engine.connect() as conn:
        assert conn.execute(select(StripeEvent.deliveries)).scalar_one() == 1


# --- Legitimate variants -----------------------------------------------------------------------


def _two_v1_one_matching(p: bytes) -> str:
    return f"t={T},v1={v1(p, secret='whsec_somebody_else')},v1={v1(p)}"


ACCEPTED: list[tuple[str, Callable[[bytes], str], list[str], int]] = [
    ("exact", lambda p: sign(p, SECRET, T), [SECRET], 0),
    ("two v1, second matches", _two_v1_one_matching, [SECRET], 0),
    ("two v1, first matches", lambda p: f"t={T},v1={v1(p)},v1={'0' * 64}", [SECRET], 0),
    ("v0 and v1", lambda p: f"t={T},v0={'0' * 64},v1={v1(p)}", [SECRET], 0),
    (
        "signed with the older of two secrets",
        lambda p: sign(p, OLD_SECRET, T),
        [SECRET, OLD_SECRET],
        0,
    ),
    ("signed with the newer of two secrets", lambda p: sign(p, SECRET, T), [OLD_SECRET, SECRET], 0),
    ("timestamp 299 s old", lambda p: sign(p, SECRET, T - 299), [SECRET], 0),
    ("timestamp exactly 300 s old", lambda p: sign(p, SECRET, T - 300), [SECRET], 0),
    ("clock skew: 30 s in the future", lambda p: sign(p, SECRET, T + 30), [SECRET], 0),
    ("clock skew: 299 s in the future", lambda p: sign(p, SECRET, T + 299), [SECRET], 0),
    ("spaces after commas", lambda p: f"t={T}, v1={v1(p)}", [SECRET], 0),
    ("unknown extra scheme", lambda p: f"t={T},v1={v1(p)},v2=abc", [SECRET], 0),
]


def deliver_accepted(
    engine: Engine, make_header: Callable[[bytes], str], secrets: list[str], delay: int
) -> None:
    evt = paid_session_event()
    payload = body_of(evt)
    outcome = receive(
        engine,
        payload,
        make_header(payload),
        secrets=secrets,
        tolerance=TOLERANCE,
        ctx=context(NOW + timedelta(seconds=delay)),
    )
    assert (outcome.status, outcome.result, outcome.event_id) == (200, "processed", evt["id"])
    with engine.connect() as conn:
        assert conn.execute(
            select(StripeEvent.status).where(StripeEvent.id == evt["id"])
        ).one() == ("processed",)


@pytest.mark.parametrize(
    ("make_header", "secrets", "delay"), [pytest.param(*c[1:], id=c[0]) for c in ACCEPTED]
)
def test_legitimate_variant_is_accepted_and_applied(
    sqlite_engine: Engine, make_header: Callable[[bytes], str], secrets: list[str], delay: int
) -> None:
    deliver_accepted(sqlite_engine, make_header, secrets, delay)
    counts = table_counts(sqlite_engine)
    assert (counts["webhook_deliveries"], counts["stripe_events"], counts["orders"]) == (1, 1, 1)
    assert counts["fulfillments"] == 1


@pytest.mark.postgres
def test_every_legitimate_variant_on_postgres(pg_engine: Engine) -> None:
    for _name, make_header, secrets, delay in ACCEPTED:
        deliver_accepted(pg_engine, make_header, secrets, delay)
    counts = table_counts(pg_engine)
    assert counts["stripe_events"] == counts["orders"] == counts["fulfillments"] == len(ACCEPTED)


@pytest.mark.parametrize(
    ("make_header", "secrets"), [pytest.param(*c[1:3], id=c[0]) for c in ACCEPTED]
)
def test_verify_returns_the_parsed_event(
    make_header: Callable[[bytes], str], secrets: list[str]
) -> None:
    evt = paid_session_event()
    payload = body_of(evt)
    assert verify(payload, make_header(payload), secrets, TOLERANCE, now=T) == evt


# --- verify() on its own -------------------------------------------------------------------------


def test_verify_requires_a_secret_and_a_positive_tolerance() -> None:
    delivery = _valid()
    with pytest.raises(ValueError, match="secret"):
        verify(delivery.payload, delivery.header, [], TOLERANCE, now=T)
    for tolerance in (0, -1):
        with pytest.raises(ValueError, match="tolerance"):
            verify(delivery.payload, delivery.header, SECRETS, tolerance, now=T)


def test_tolerance_applies_both_ways_at_its_exact_edges() -> None:
    payload = body_of(paid_session_event())
    for tolerance in (1, 60, 300, 3600):
        for offset, reason in (
            (tolerance, None),
            (-tolerance, None),
            (tolerance + 1, "timestamp_too_old"),
            (-tolerance - 1, "timestamp_in_future"),
        ):
            header = sign(payload, SECRET, T - offset)
            if reason is None:
                assert verify(payload, header, SECRETS, tolerance, now=T)["object"] == "event"
            else:
                with pytest.raises(Rejection) as caught:
                    verify(payload, header, SECRETS, tolerance, now=T)
                assert caught.value.reason == reason


def test_signature_is_checked_before_the_timestamp() -> None:
    """A forged header with a fresh timestamp must not learn more than "no match"."""
    payload = body_of(paid_session_event())
    with pytest.raises(Rejection) as caught:
        verify(payload, sign(payload, "whsec_forged", T - 10_000), SECRETS, TOLERANCE, now=T)
    assert caught.value.reason == "no_matching_signature"


def test_verify_uses_the_current_time_by_default() -> None:
    import time

    payload = body_of(paid_session_event())
    assert verify(payload, sign(payload, SECRET), SECRETS, TOLERANCE)["id"].startswith("evt_")
    with pytest.raises(Rejection, match="older"):
        verify(payload, sign(payload, SECRET, int(time.time()) - 400), SECRETS, TOLERANCE)


def test_our_signatures_are_stripes_signatures() -> None:
    """Differential check against stripe-python: what it accepts, we accept, and vice versa for
    well-formed input; and the inputs it crashes on are exactly the ones we must classify."""
    import time

    now = int(time.time())
    payload = body_of(paid_session_event())
    header = sign(payload, SECRET, now)
    event = stripe.Webhook.construct_event(payload, header, SECRET, tolerance=TOLERANCE)
    assert event.id == json.loads(payload)["id"]
    assert verify(payload, header, SECRETS, TOLERANCE)["id"] == event.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, sign(payload, "whsec_other", now), SECRET)

    # stripe-python's gaps, each of which core.webhook turns into a 400:
    future = sign(payload, SECRET, now + 3600)
    assert stripe.Webhook.construct_event(payload, future, SECRET, tolerance=TOLERANCE)
    with pytest.raises(TypeError):
        stripe.WebhookSignature.verify_header(
            payload.decode(), f"t={now},v1={v1(payload, now)[:-1]}é", SECRET, TOLERANCE
        )
    with pytest.raises(UnicodeDecodeError):
        stripe.Webhook.construct_event(b"\xff", sign(b"\xff", SECRET, now), SECRET)
    with pytest.raises(ValueError):
        stripe.Webhook.construct_event(b"{", sign(b"{", SECRET, now), SECRET)
