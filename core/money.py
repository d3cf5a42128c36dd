"""Money is an integer in the currency's minor unit plus an ISO currency code."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
# Charged in minor units but with three decimals.
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


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
