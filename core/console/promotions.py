"""Promotion codes: list them with their coupon's terms, create, deactivate and reactivate them,
and read their health from our own tables.

A new code is a validated `NewPromotionCode`: every rule is checked, with a message a person
can act on, before anything is sent to Stripe. Codes use the current API shape, where a code
names its coupon under `promotion` (`{"type": "coupon", "coupon": id}`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine

from core.auth.permissions import Actor, require
from core.console.stripe_api import ActionResult, StripeApi, action_key, run_action
from core.money import MoneyError, format_minor, stripe_amount, stripe_currency

CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


CODE_MAX = 40


COUPON_NAME_MAX = 40


Duration = Literal["once", "repeating", "forever"]


DURATIONS: tuple[Duration, ...] = ("once", "repeating", "forever")


_T = TypeVar("_T")


class InvalidPromotion(ValueError):
    """The input cannot become a promotion code; `problems` are messages safe to show."""

    def __init__(self, problems: list[str], fields: dict[str, str] | None = None) -> None:
        super().__init__(" ".join(problems))
        self.problems = problems
        self.fields = fields or {}  # form field -> its problem


@dataclass(frozen=True)
class CouponTerms:
    id: str
    name: str | None
    percent_off: float | None
    amount_off: int | None
    currency: str | None
    duration: str
    duration_in_months: int | None
    valid: bool

    def describe(self) -> str:
        if self.percent_off is not None:
            off = f"{self.percent_off:g}% off"
        elif self.amount_off is not None:
            off = f"{format_minor(self.amount_off, self.currency)} off"
        else:
            off = "discount"
        if self.duration == "repeating" and self.duration_in_months:
            return f"{off} for {self.duration_in_months} months"
        return f"{off} ({self.duration})"


@dataclass(frozen=True)
class PromotionCodeView:
    id: str
    code: str
    active: bool
    coupon: CouponTerms | None
    times_redeemed: int
    max_redemptions: int | None
    expires_at: datetime | None
    first_time_only: bool
    minimum_amount: int | None
    minimum_amount_currency: str | None
    customer: str | None
    created: datetime | None

    @property
    def restrictions(self) -> str:
        parts = []
        if self.first_time_only:
            parts.append("first-time customers only")
        if self.minimum_amount:
            parts.append(
                f"minimum {format_minor(self.minimum_amount, self.minimum_amount_currency)}"
            )
        if self.customer:
            parts.append(f"customer {self.customer} only")
        return ", ".join(parts) or "none"

    def usage_share(self) -> float | None:
        if not self.max_redemptions:
            return None
        try:
            return self.times_redeemed / self.max_redemptions
        except OverflowError:  # absurd counts from Stripe: too large for a float
            return None


def _time(value: Any) -> datetime | None:
    """A Stripe timestamp; None when absent or beyond what a datetime holds (any value Stripe
    sends must render)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def coupon_terms(coupon: Mapping[str, Any]) -> CouponTerms:
    percent = coupon.get("percent_off")
    if isinstance(percent, str):  # decimal fields arrive as strings from to_dict(for_json=True)
        try:
            percent = Decimal(percent)
        except InvalidOperation:
            percent = None
    return CouponTerms(
        id=str(coupon.get("id")),
        name=coupon.get("name") if isinstance(coupon.get("name"), str) else None,
        percent_off=float(percent) if isinstance(percent, int | float | Decimal) else None,
        amount_off=_int_or_none(coupon.get("amount_off")),
        currency=coupon.get("currency") if isinstance(coupon.get("currency"), str) else None,
        duration=str(coupon.get("duration") or "once"),
        duration_in_months=_int_or_none(coupon.get("duration_in_months")),
        valid=bool(coupon.get("valid", True)),
    )


def _coupon_of(code: Mapping[str, Any]) -> Any:
    """The coupon a code names: `promotion.coupon` now, a top-level `coupon` before 2025."""
    promotion = code.get("promotion")
    if isinstance(promotion, Mapping) and promotion.get("coupon") is not None:
        return promotion.get("coupon")
    return code.get("coupon")


def promotion_view(code: Mapping[str, Any], coupon: Mapping[str, Any] | None) -> PromotionCodeView:
    restrictions = code.get("restrictions")
    restrictions = restrictions if isinstance(restrictions, Mapping) else {}
    customer = code.get("customer")
    return PromotionCodeView(
        id=str(code.get("id")),
        code=str(code.get("code")),
        active=bool(code.get("active")),
        coupon=coupon_terms(coupon) if coupon else None,
        times_redeemed=_int_or_none(code.get("times_redeemed")) or 0,
        max_redemptions=_int_or_none(code.get("max_redemptions")),
        expires_at=_time(code.get("expires_at")),
        first_time_only=bool(restrictions.get("first_time_transaction")),
        minimum_amount=_int_or_none(restrictions.get("minimum_amount")),
        minimum_amount_currency=restrictions.get("minimum_amount_currency"),
        customer=customer if isinstance(customer, str) else None,
        created=_time(code.get("created")),
    )


def list_promotion_codes(client: StripeApi, actor: Actor) -> list[PromotionCodeView]:
    """Every code (all pages), with its coupon's terms; coupons Stripe did not expand are
    fetched once each."""
    require(actor, "promotions.view")
    coupons: dict[str, Mapping[str, Any]] = {}
    views = []
    for code in client.list_promotion_codes():
        coupon = _coupon_of(code)
        if isinstance(coupon, str):
            if coupon not in coupons:
                coupons[coupon] = client.retrieve_coupon(coupon).data
            coupon = coupons[coupon]
        views.append(promotion_view(code, coupon if isinstance(coupon, Mapping) else None))
    return sorted(views, key=lambda v: (not v.active, v.code.lower()))


MAX_REDEMPTIONS = 2**31 - 1  # Stripe's integer fields are 32-bit


MAX_MONTHS = 36


EXPIRY_YEARS = 5


COUPON_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class _Refused(ValueError):
    """One field's value cannot be used; the message is safe to show."""


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return str(value).strip() if value is not None else ""


def _whole(raw: str, label: str, most: int) -> int | None:
    """An optional whole number from 1 to `most`, written as plain digits."""
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise _Refused(f"{label} must be a whole number.")
    value = int(raw[:20])  # more digits than that is out of range anyway
    if value < 1:
        raise _Refused(f"{label} must be at least 1.")
    if len(raw) > 19 or value > most:
        raise _Refused(f"{label} must be at most {most:,}.")
    return value


def check_code(form: Mapping[str, Any]) -> str:
    code = _text(form, "code")
    if not code:
        raise _Refused("Enter a code.")
    if len(code) > CODE_MAX:
        raise _Refused(f"The code is longer than {CODE_MAX} characters.")
    if not CODE_PATTERN.match(code):
        raise _Refused("The code may contain only letters, digits, dashes and underscores.")
    return code


def check_percent(raw: str) -> Decimal:
    try:
        percent = Decimal(raw)
    except InvalidOperation:
        raise _Refused("The percentage must be a number between 1 and 100.") from None
    if not percent.is_finite() or not 1 <= percent <= 100:
        raise _Refused("The percentage must be between 1 and 100.")
    if percent.as_tuple().exponent < -2:  # type: ignore[operator]
        raise _Refused("The percentage allows at most two decimals.")
    return percent


def check_money(raw: str, currency: str, label: str) -> tuple[int, str]:
    """(minor units, currency) of an amount within Stripe's limits, or a refusal naming it."""
    try:
        code = stripe_currency(currency)
        return stripe_amount(raw, code), code
    except MoneyError as exc:
        raise _Refused(f"{label}: {exc}") from None


def check_duration(form: Mapping[str, Any]) -> tuple[Duration, int | None]:
    duration = _text(form, "duration") or "once"
    if duration not in DURATIONS:
        raise _Refused("The duration must be once, repeating or forever.")
    if duration != "repeating":
        return duration, None
    months = _whole(_text(form, "duration_in_months"), "The number of months", 10**6)
    if months is None:
        raise _Refused("A repeating coupon needs its number of months.")
    if months > MAX_MONTHS:
        raise _Refused(f"A repeating coupon lasts at most {MAX_MONTHS} months.")
    return "repeating", months


def check_expiry(value: Any, now: datetime) -> datetime | None:
    """None, an aware datetime, or a day written YYYY-MM-DD (the code expires at its end, UTC);
    in the future and within EXPIRY_YEARS."""
    if value in ("", None):
        return None
    if isinstance(value, str):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            raise _Refused("The expiry must be a date written YYYY-MM-DD.") from None
        value = datetime.combine(day, time(23, 59, 59), UTC)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(23, 59, 59), UTC)
    if not isinstance(value, datetime):
        raise _Refused("The expiry must be a date and time.")
    if value.tzinfo is None:
        raise _Refused("The expiry needs a time zone (UTC).")
    if value <= now:
        raise _Refused("The expiry must be in the future.")
    latest = now + timedelta(days=EXPIRY_YEARS * 365)
    if value > latest:
        raise _Refused(f"The expiry must be within {EXPIRY_YEARS} years (by {latest:%Y-%m-%d}).")
    return value


@dataclass(frozen=True)
class NewPromotionCode:
    """A promotion code to create, valid by construction (use `parse`)."""

    code: str
    coupon_id: str | None = None  # an existing coupon; otherwise the terms below make a new one
    percent_off: Decimal | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration: Duration = "once"
    duration_in_months: int | None = None
    coupon_name: str | None = None
    max_redemptions: int | None = None
    expires_at: datetime | None = None
    first_time_only: bool = False
    minimum_amount: int | None = None
    minimum_amount_currency: str | None = None

    @classmethod
    def parse(cls, form: Mapping[str, Any], *, now: datetime) -> NewPromotionCode:
        """Build from a form's raw values (amounts in major units, e.g. "5.00"), field by
        field. Raises InvalidPromotion naming every field that is wrong."""
        problems: dict[str, str] = {}

        def field_(name: str, check: Callable[[], _T]) -> _T | None:
            try:
                return check()
            except _Refused as refused:
                problems[name] = str(refused)
                return None

        values: dict[str, Any] = {
            "code": field_("code", lambda: check_code(form)),
            "max_redemptions": field_(
                "max_redemptions",
                lambda: _whole(
                    _text(form, "max_redemptions"), "The redemption limit", MAX_REDEMPTIONS
                ),
            ),
            "expires_at": field_("expires_at", lambda: check_expiry(form.get("expires_at"), now)),
            "first_time_only": bool(form.get("first_time_only")),
        }
        coupon_id = _text(form, "coupon_id") or None
        if coupon_id is None:
            values.update(cls._coupon_terms(form, field_))
        elif not COUPON_ID.match(coupon_id):
            problems["coupon_id"] = "That coupon id is not valid."
        values["coupon_id"] = coupon_id
        if _text(form, "minimum_amount"):
            currency = _text(form, "minimum_amount_currency") or values.get("currency") or ""
            minimum = field_(
                "minimum_amount",
                lambda: check_money(_text(form, "minimum_amount"), currency, "Minimum amount"),
            )
            if minimum is not None:
                values["minimum_amount"], values["minimum_amount_currency"] = minimum
        if problems:
            raise InvalidPromotion(list(problems.values()), problems)
        return cls(**values)

    @staticmethod
    def _coupon_terms(
        form: Mapping[str, Any], field_: Callable[[str, Callable[[], Any]], Any]
    ) -> dict[str, Any]:
        """The terms of a new coupon: a percentage or an amount, a duration, a name."""
        terms: dict[str, Any] = {}
        raw_percent, raw_amount = _text(form, "percent_off"), _text(form, "amount_off")

        def one_of() -> None:
            if raw_percent and raw_amount:
                raise _Refused("Give either a percentage or an amount off, not both.")
            if not raw_percent and not raw_amount:
                raise _Refused("Give a percentage or an amount off (or pick an existing coupon).")

        field_("percent_off", one_of)
        if raw_percent and not raw_amount:
            terms["percent_off"] = field_("percent_off", lambda: check_percent(raw_percent))
        elif raw_amount and not raw_percent:
            money = field_(
                "amount_off",
                lambda: check_money(raw_amount, _text(form, "currency"), "Amount off"),
            )
            if money is not None:
                terms["amount_off"], terms["currency"] = money
        duration = field_("duration", lambda: check_duration(form))
        if duration is not None:
            terms["duration"], terms["duration_in_months"] = duration
        name = _text(form, "coupon_name") or None

        def check_name() -> str | None:
            if name and len(name) > COUPON_NAME_MAX:
                raise _Refused(f"The coupon name is longer than {COUPON_NAME_MAX} characters.")
            return name

        terms["coupon_name"] = field_("coupon_name", check_name)
        return terms

    def describe(self) -> str:
        """What will be created, in words: "SPRING: 15% off (once), limit 100, expires ..."."""
        if self.coupon_id is not None:
            terms = f"coupon {self.coupon_id}"
        else:
            terms = CouponTerms(
                id="",
                name=self.coupon_name,
                percent_off=float(self.percent_off) if self.percent_off is not None else None,
                amount_off=self.amount_off,
                currency=self.currency,
                duration=self.duration,
                duration_in_months=self.duration_in_months,
                valid=True,
            ).describe()
        parts = [f"{self.code}: {terms}"]
        if self.max_redemptions is not None:
            parts.append(f"limit {self.max_redemptions:,}")
        if self.expires_at is not None:
            parts.append(f"expires {self.expires_at:%Y-%m-%d %H:%M} UTC")
        if self.minimum_amount is not None:
            minimum = format_minor(self.minimum_amount, self.minimum_amount_currency)
            parts.append(f"minimum {minimum}")
        if self.first_time_only:
            parts.append("first-time customers only")
        return ", ".join(parts)

    def coupon_params(self, coupon_id: str) -> dict[str, Any]:
        """The parameters of the new coupon (an explicit id: a retry cannot make a second)."""
        params: dict[str, Any] = {"id": coupon_id, "duration": self.duration}
        if self.percent_off is not None:
            params["percent_off"] = f"{self.percent_off.normalize():f}"  # never "2E+1"
        else:
            params["amount_off"] = self.amount_off
            params["currency"] = self.currency
        if self.duration == "repeating":
            params["duration_in_months"] = self.duration_in_months
        params["name"] = self.coupon_name or self.code
        return params

    def code_params(self, coupon_id: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "code": self.code,
            "promotion": {"type": "coupon", "coupon": coupon_id},
        }
        if self.max_redemptions is not None:
            params["max_redemptions"] = self.max_redemptions
        if self.expires_at is not None:
            params["expires_at"] = int(self.expires_at.timestamp())
        restrictions: dict[str, Any] = {}
        if self.first_time_only:
            restrictions["first_time_transaction"] = True
        if self.minimum_amount is not None:
            restrictions["minimum_amount"] = self.minimum_amount
            restrictions["minimum_amount_currency"] = self.minimum_amount_currency
        if restrictions:
            params["restrictions"] = restrictions
        return params


def create_promotion_code(
    engine: Engine, client: StripeApi, actor: Actor, new: NewPromotionCode, token: str
) -> ActionResult:
    """Create the coupon (if new) and the code, each as one stored action: a retry of the same
    form (`token`) reuses both idempotency keys, so it never makes a second coupon or code."""
    require(actor, "promotions.manage")
    target = f"promotion_code:{new.code}"
    coupon_id = new.coupon_id
    if coupon_id is None:
        coupon_id = f"{new.code}-{token[:8]}"[:255]
        params = new.coupon_params(coupon_id)
        run_action(
            engine,
            actor,
            kind="coupon.create",
            key=action_key("coupon.create", target, token, params),
            call=lambda idem: client.create_coupon(params, idem),
            target=f"coupon:{coupon_id}",
            details={"coupon": params},
        )
    code_params = new.code_params(coupon_id)
    return run_action(
        engine,
        actor,
        kind="promotion_code.create",
        key=action_key("promotion_code.create", target, token, code_params),
        call=lambda idem: client.create_promotion_code(code_params, idem),
        target=target,
        details={"code": new.code, "coupon": coupon_id, "params": code_params},
    )


def set_active(
    engine: Engine,
    client: StripeApi,
    actor: Actor,
    promotion_code_id: str,
    active: bool,
    token: str,
) -> ActionResult:
    """Deactivate (or reactivate) a code."""
    require(actor, "promotions.manage")
    if not re.match(r"^[A-Za-z0-9_]{1,255}$", promotion_code_id):
        raise InvalidPromotion(["That promotion code id is not valid."])
    kind = "promotion_code.activate" if active else "promotion_code.deactivate"
    params = {"active": active}
    return run_action(
        engine,
        actor,
        kind=kind,
        key=action_key(kind, promotion_code_id, token, params),
        call=lambda idem: client.update_promotion_code(promotion_code_id, params, idem),
        target=f"promotion_code:{promotion_code_id}",
        details={"active": active},
    )
