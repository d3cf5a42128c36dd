"""Money is an integer in the currency's minor unit plus an ISO currency code."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
# Charged in minor units but with three decimals.
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


# Stripe's presentment currencies (ISO 4217 codes), https://docs.stripe.com/currencies
CURRENCIES = frozenset(
    """
    aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn
    bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd
    gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak
    lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd
    omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd std
    szl thb tjs tnd top try ttd twd tzs uah ugx usd uyu uzs vnd vuv wst xaf xcd xof xpf yer zar
    zmw
    """.split()  # noqa: SIM905
)
# Stripe's largest amount: eight digits in the minor unit (USD 999,999.99), whatever the
# currency (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
MAX_AMOUNT_MINOR = 99_999_999
_PLAIN_AMOUNT = re.compile(r"^[0-9]{1,30}(?:\.[0-9]{1,30})?$")


class MoneyError(ValueError):
    """An amount or currency that cannot be used; the message is safe to show."""


def exponent(currency: str) -> int:
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def validate_currency(currency: str) -> str:
    code = currency.strip().lower()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise MoneyError("Currency must be a three-letter ISO code such as usd or eur.")
    return code


def to_minor(amount: str | Decimal, currency: str) -> int:
    """'12.34' usd -> 1234; refuses more decimals than the currency has, and negatives."""
    code = validate_currency(currency)
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise MoneyError("Amount must be a number such as 12.50.") from None
    if not value.is_finite() or value < 0:
        raise MoneyError("Amount must be a positive number.")
    scaled = value.scaleb(exponent(code))
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{code.upper()} allows at most {exponent(code)} decimal places.")
    return int(scaled)


def stripe_currency(currency: str) -> str:
    """A currency Stripe charges in (lower case), or MoneyError."""
    code = validate_currency(currency)
    if code not in CURRENCIES:
        raise MoneyError(f"{code.upper()} is not a currency Stripe charges in.")
    return code


def stripe_amount(amount: str, currency: str) -> int:
    """A positive amount written plainly in major units ("12.50", no sign, exponent or
    separators), within Stripe's limit, in the minor unit of a Stripe currency."""
    code = stripe_currency(currency)
    text = amount.strip()
    if not _PLAIN_AMOUNT.match(text):
        raise MoneyError("Amount must be written as digits with an optional decimal point.")
    minor = to_minor(text, code)
    if minor < 1:
        raise MoneyError("Amount must be more than zero.")
    if minor > MAX_AMOUNT_MINOR:
        raise MoneyError(
            f"Amount must be at most {format_minor(MAX_AMOUNT_MINOR, code)} (Stripe's limit)."
        )
    return minor


def plain_major(amount: int, currency: str) -> str:
    """1234, 'usd' -> '12.34' (what `to_minor` reads back); 500, 'jpy' -> '500'."""
    digits = exponent(currency)
    return f"{Decimal(amount).scaleb(-digits):.{digits}f}"


def format_minor(amount: int, currency: str | None) -> str:
    """1234, 'usd' -> 'USD 12.34'; 500, 'jpy' -> 'JPY 500'."""
    if not currency:
        return str(amount)
    digits = exponent(currency)
    value = Decimal(amount).scaleb(-digits)
    return f"{currency.upper()} {value:,.{digits}f}"


def to_major(amount: int, currency: str) -> float:
    """For charts only: never for arithmetic on money."""
    return float(Decimal(amount).scaleb(-exponent(currency)))
