"""The frames the CSV downloads write: numbers a spreadsheet reads as numbers.

Amounts in major units (exact decimals, e.g. 2809.75 or JPY 12000) beside their currency,
rates rounded to 4 decimals, times in ISO 8601 with their UTC offset, decline codes with
Stripe's words beside them, and which buckets cover only part of their hour, day or week."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

from core.console.declines import decline_words
from core.console.period import Grain, Period, is_partial
from core.money import exponent

RATE_DECIMALS = 4


def iso(times: pd.Series) -> pd.Series:
    """UTC timestamps as ISO 8601 text with the offset: 2026-11-20T15:00:00+00:00."""
    return times.map(lambda value: value.isoformat())


def partial(buckets: pd.Series, grain: Grain, period: Period) -> pd.Series:
    return buckets.map(lambda value: is_partial(value.to_pydatetime(), grain, period))


def major(amount: int, currency: str) -> Decimal:
    """Integer minor units as an exact decimal in major units (900 usd -> 9.00)."""
    return Decimal(int(amount)).scaleb(-exponent(currency))


def rates(frame: pd.DataFrame, period: Period, grain: Grain) -> pd.DataFrame:
    out = frame.copy()
    out.insert(1, "partial", partial(frame["bucket"], grain, period))
    out["bucket"] = iso(frame["bucket"])
    rate_columns = [column for column in out.columns if "rate" in column]
    out[rate_columns] = out[rate_columns].astype("float64").round(RATE_DECIMALS)
    return out.rename(columns={"bucket": "bucket_start_utc"})


def volume(frame: pd.DataFrame, period: Period, grain: Grain) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "bucket_start_utc": iso(frame["bucket"]),
            "partial": partial(frame["bucket"], grain, period),
            "currency": frame["currency"].str.upper(),
            "amount": [
                major(amount, currency)
                for amount, currency in zip(frame["amount"], frame["currency"], strict=True)
            ],
            "payments": frame["payments"],
        }
    )


def reasons(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reason": frame["decline_code"].map(decline_words),
            "decline_code": frame["decline_code"],
            "failures": frame["failures"],
            "share": frame["share"].astype("float64").round(RATE_DECIMALS),
        }
    )
