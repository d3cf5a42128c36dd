"""Promotion codes: every invalid input refused with its own message before anything is sent;
valid input becomes exactly the parameters Stripe expects; listing reads both coupon shapes;
the health view reads our own tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from core.auth.permissions import Actor, PermissionDenied
from core.console.promotion_health import code_usage, daily_redemptions, watch_list
from core.console.promotions import (
    InvalidPromotion,
    NewPromotionCode,
    PromotionCodeView,
    create_promotion_code,
    list_promotion_codes,
    promotion_view,
    set_active,
)
from core.console.stripe_api import StripeApi, new_token
from core.db import session_scope
from core.models import Order, PaymentAttempt
from tests.support.stripe_objects import example
from tests.support.stripe_standin import FakeStripe

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ADMIN = Actor("alice", "admin")


@pytest.fixture
def fake(fake: FakeStripe) -> FakeStripe:
    fake.add_coupon(id="TENOFF")
    return fake


GOOD: dict[str, Any] = {"code": "WINTER-24_a", "percent_off": "20"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"code": ""}, "Enter a code."),
        ({"code": "has space"}, "only letters, digits, dashes and underscores"),
        ({"code": "ÉTÉ"}, "only letters, digits, dashes and underscores"),
        ({"code": "X" * 41}, "longer than 40 characters"),
        ({"percent_off": ""}, "Give a percentage or an amount off"),
        ({"percent_off": "0"}, "between 1 and 100"),
        ({"percent_off": "100.5"}, "between 1 and 100"),
        ({"percent_off": "-5"}, "between 1 and 100"),
        ({"percent_off": "ten"}, "must be a number between 1 and 100"),
        ({"percent_off": "NaN"}, "between 1 and 100"),
        ({"percent_off": "12.345"}, "at most two decimals"),
        ({"amount_off": "5", "currency": "usd"}, "either a percentage or an amount off"),
        ({"percent_off": "", "amount_off": "5"}, "Amount off: Currency must be"),
        ({"percent_off": "", "amount_off": "5", "currency": "dollars"}, "three-letter ISO"),
        ({"percent_off": "", "amount_off": "5.001", "currency": "usd"}, "at most 2 decimal"),
        ({"percent_off": "", "amount_off": "100.5", "currency": "jpy"}, "at most 0 decimal"),
        ({"percent_off": "", "amount_off": "0", "currency": "usd"}, "more than zero"),
        ({"duration": "weekly"}, "once, repeating or forever"),
        ({"duration": "repeating"}, "needs its number of months"),
        ({"duration": "repeating", "duration_in_months": "0"}, "months must be at least 1"),
        ({"duration": "repeating", "duration_in_months": "37"}, "at most 36 months"),
        ({"max_redemptions": "0"}, "redemption limit must be at least 1"),
        ({"max_redemptions": "1.5"}, "redemption limit must be a whole number"),
        ({"expires_at": NOW - timedelta(minutes=1)}, "must be in the future"),
        ({"expires_at": NOW}, "must be in the future"),
        ({"expires_at": datetime(2027, 1, 1)}, "needs a time zone"),
        ({"expires_at": "tomorrow"}, "must be a date written YYYY-MM-DD"),
        ({"minimum_amount": "abc", "minimum_amount_currency": "usd"}, "Minimum amount:"),
        ({"minimum_amount": "10"}, "Minimum amount: Currency must be"),
        ({"coupon_id": "no spaces please", "percent_off": ""}, "coupon id is not valid"),
    ],
)
def test_invalid_input_is_refused_before_anything_is_sent(
    fake: FakeStripe, sqlite_engine: Engine, changes: dict[str, Any], message: str
) -> None:
    form = {**GOOD, **changes}
    with pytest.raises(InvalidPromotion) as caught:
        new = NewPromotionCode.parse(form, now=NOW)
        create_promotion_code(
            sqlite_engine, StripeApi("sk_test_x", api_base=fake.url), ADMIN, new, "t"
        )
    assert any(message in problem for problem in caught.value.problems), caught.value.problems
    assert fake.requests == []


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"percent_off": "", "amount_off": "99999999999999.00", "currency": "usd"},
         "amount_off", "at most USD 999,999.99 (Stripe's limit)"),
        ({"percent_off": "", "amount_off": "100000000", "currency": "jpy"},
         "amount_off", "at most JPY 99,999,999"),
        ({"percent_off": "", "amount_off": "5", "currency": "xyz"},
         "amount_off", "XYZ is not a currency Stripe charges in"),
        ({"minimum_amount": "1e9", "minimum_amount_currency": "usd"},
         "minimum_amount", "written as digits"),
        ({"minimum_amount": "1000000", "minimum_amount_currency": "usd"},
         "minimum_amount", "Stripe's limit"),
        ({"minimum_amount": "-5", "minimum_amount_currency": "usd"},
         "minimum_amount", "written as digits"),
        ({"max_redemptions": "99999999999999999999"}, "max_redemptions", "at most 2,147,483,647"),
        ({"max_redemptions": "2147483648"}, "max_redemptions", "at most 2,147,483,647"),
        ({"max_redemptions": "1e3"}, "max_redemptions", "whole number"),
        ({"duration": "repeating", "duration_in_months": "99999999999999999999999"},
         "duration", "at most"),
        ({"expires_at": "2099-01-01"}, "expires_at", "within 5 years"),
        ({"expires_at": "2026-11-22"}, "expires_at", "must be in the future"),
        ({"expires_at": "01/01/2027"}, "expires_at", "YYYY-MM-DD"),
    ],
)  # fmt: skip
def test_values_beyond_stripes_limits_are_refused_by_field(
    changes: dict[str, Any], field: str, message: str
) -> None:
    """Findings 1, 3 and 4 (issue 13): a 20-digit redemption limit, amount_off
    99,999,999,999,999.00, currency `xyz`, a minimum of `1e9` and an expiry in 2099 were
    accepted; each is now refused, naming its field."""
    with pytest.raises(InvalidPromotion) as caught:
        NewPromotionCode.parse({**GOOD, **changes}, now=NOW)
    assert list(caught.value.fields) == [field]
    assert message in caught.value.fields[field], caught.value.fields


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"percent_off": "", "amount_off": "999999.99", "currency": "usd"}, 99_999_999),
        ({"percent_off": "", "amount_off": "99999999", "currency": "JPY"}, 99_999_999),
        ({"max_redemptions": "2147483647"}, 2_147_483_647),
        ({"expires_at": "2031-11-21"}, datetime(2031, 11, 21, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_values_at_the_limits_are_accepted(changes: dict[str, Any], expected: Any) -> None:
    new = NewPromotionCode.parse({**GOOD, **changes}, now=NOW)
    field = next(iter(changes.keys() - {"percent_off", "currency"}))
    assert getattr(new, field) == expected


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(InvalidPromotion) as caught:
        NewPromotionCode.parse({"code": "a b", "percent_off": "0", "max_redemptions": "0"}, now=NOW)
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize(
    ("form", "coupon", "code"),
    [
        (
            {"code": "TWENTY", "percent_off": "20"},
            {"id": "C", "duration": "once", "percent_off": "20", "name": "TWENTY"},
            {"code": "TWENTY", "promotion": {"type": "coupon", "coupon": "C"}},
        ),
        (
            {"code": "YEN", "amount_off": "500", "currency": "JPY", "duration": "forever",
             "coupon_name": "Five hundred yen"},
            {"id": "C", "duration": "forever", "amount_off": 500, "currency": "jpy",
             "name": "Five hundred yen"},
            {"code": "YEN", "promotion": {"type": "coupon", "coupon": "C"}},
        ),
        (
            {"code": "KWD", "amount_off": "1.250", "currency": "kwd", "percent_off": "",
             "max_redemptions": "5", "minimum_amount": "10", "first_time_only": True},
            {"id": "C", "duration": "once", "amount_off": 1250, "currency": "kwd", "name": "KWD"},
            {"code": "KWD", "promotion": {"type": "coupon", "coupon": "C"}, "max_redemptions": 5,
             "restrictions": {"first_time_transaction": True, "minimum_amount": 10000,
                              "minimum_amount_currency": "kwd"}},
        ),
        (
            {"code": "HALF", "percent_off": "12.50", "duration": "repeating",
             "duration_in_months": "6"},
            {"id": "C", "duration": "repeating", "percent_off": "12.5", "duration_in_months": 6,
             "name": "HALF"},
            {"code": "HALF", "promotion": {"type": "coupon", "coupon": "C"}},
        ),
    ],
)  # fmt: skip
def test_valid_input_becomes_stripe_parameters(
    form: dict[str, Any], coupon: dict[str, Any], code: dict[str, Any]
) -> None:
    new = NewPromotionCode.parse(form, now=NOW)
    assert new.coupon_params("C") == coupon
    assert new.code_params("C") == code


def test_only_admins_create_and_nothing_is_sent_otherwise(
    fake: FakeStripe, sqlite_engine: Engine
) -> None:
    client = StripeApi("sk_test_x", api_base=fake.url)
    new = NewPromotionCode.parse(GOOD, now=NOW)
    for role in ("support", "finance"):
        actor = Actor(role, role)
        with pytest.raises(PermissionDenied):
            create_promotion_code(sqlite_engine, client, actor, new, new_token())
        with pytest.raises(PermissionDenied):
            set_active(sqlite_engine, client, actor, "promo_1", False, new_token())
        assert list_promotion_codes(client, actor) == []  # viewing is allowed
    assert fake.writes() == []


def test_listing_reads_expanded_and_plain_coupons(fake: FakeStripe) -> None:
    fake.add_coupon(id="FIVER", percent_off=None, amount_off=500, currency="usd", duration="once")
    fake.add_code("FIVE", "FIVER", times_redeemed=9, max_redemptions=10)
    plain = example("promotion_code")  # the pre-2025 shape: a top-level coupon id
    del plain["promotion"]
    plain.update(coupon="TENOFF", active=False)
    view = promotion_view(plain, fake.coupons["TENOFF"])
    assert view.coupon is not None and view.coupon.describe() == "10% off (forever)"
    codes = list_promotion_codes(StripeApi("sk_test_x", api_base=fake.url), ADMIN)
    (five,) = codes
    assert five.coupon is not None and five.coupon.describe() == "USD 5.00 off (once)"
    assert (five.times_redeemed, five.max_redemptions, five.usage_share()) == (9, 10, 0.9)


def _view(code: str, **fields: Any) -> PromotionCodeView:
    values: dict[str, Any] = {
        "id": f"promo_{code}",
        "code": code,
        "active": True,
        "coupon": None,
        "times_redeemed": 0,
        "max_redemptions": None,
        "expires_at": None,
        "first_time_only": False,
        "minimum_amount": None,
        "minimum_amount_currency": None,
        "customer": None,
        "created": None,
    }
    values.update(fields)
    return PromotionCodeView(**values)


def test_watch_list_flags_codes_near_their_limit_or_expiry() -> None:
    codes = [
        _view("NEAR", times_redeemed=8, max_redemptions=10),
        _view("FAR", times_redeemed=7, max_redemptions=10),
        _view("SOON", expires_at=NOW + timedelta(hours=30)),
        _view("LATER", expires_at=NOW + timedelta(days=8)),
        _view("OFF", active=False, times_redeemed=10, max_redemptions=10),
        _view("GONE", expires_at=NOW - timedelta(hours=1)),
    ]
    assert [(w.code, w.problem) for w in watch_list(codes, NOW)] == [
        ("NEAR", "8 of 10 redemptions used"),
        ("SOON", "expires in 30 h"),
    ]


def test_health_from_our_tables(engine: Engine) -> None:
    day1, day2 = NOW - timedelta(days=2), NOW - timedelta(days=1)
    with session_scope(engine) as session:
        for n, (code, paid, disputed, refunded) in enumerate(
            [
                ("promo_A", day1, None, 0),
                ("promo_A", day2, day2, 0),
                ("promo_A", day2, None, 500),
                ("promo_B", None, None, 0),
                (None, day1, None, 0),
            ]
        ):
            session.add(
                Order(
                    checkout_session_id=f"cs_{n}",
                    payment_intent_id=f"pi_{n}",
                    amount_total=1000,
                    currency="usd",
                    status="paid",
                    promotion_code=code,
                    paid_at=paid,
                    disputed_at=disputed,
                    amount_refunded=refunded,
                    created_at=NOW - timedelta(days=3),
                )
            )
        for n, (code, outcome) in enumerate(
            [
                ("promo_B", "failed"),
                ("promo_B", "failed"),
                ("promo_A", "succeeded"),
                ("C", "failed"),
            ]
        ):
            session.add(
                PaymentAttempt(
                    id=f"ch_{n}",
                    promotion_code=code,
                    outcome=outcome,
                    created=NOW - timedelta(hours=n),
                )
            )
    with session_scope(engine, write=False) as session:
        usage = code_usage(session, NOW - timedelta(days=30))
        daily = daily_redemptions(session, NOW - timedelta(days=30))
    assert {c: (u.paid_orders, u.disputed_orders, u.refunded_orders, u.failed_attempts)
            for c, u in usage.items()} == {
        "promo_A": (3, 1, 1, 0),
        "promo_B": (0, 0, 0, 2),
        "C": (0, 0, 0, 1),
    }  # fmt: skip
    assert [(d.date(), c, n) for d, c, n in daily] == [
        (day1.date(), "promo_A", 1),
        (day2.date(), "promo_A", 2),
    ]
