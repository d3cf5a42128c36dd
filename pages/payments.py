"""Payments: success and decline rates over time, decline reasons, volumes by currency."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, exports, widgets
from dashboard.auth import require

actor = require("metrics.view")
st.set_page_config(layout="wide")  # tables and per-currency figures need the width

st.title("Payments")
period = widgets.period_picker("payments")
grain = widgets.grain_picker(period, "payments")
st.caption(
    widgets.md("{} (UTC), by {}. {}", widgets.period_label(period), grain, charts.PARTIAL_NOTE)
)

st.subheader("Success and decline rates")
st.caption(
    "“All attempts” counts every try; “per card” counts each card once per bucket "
    "(deduplicated by card fingerprint, as Stripe recommends), so one customer retrying "
    "a declined card does not drag the rate down."
)
rates = data.payment_rates(actor, period, grain)
if rates.empty:
    st.info("No payment attempts in this period.")
else:
    charts.rates(
        rates,
        {
            "success_rate": "Success (all attempts)",
            "success_rate_per_card": "Success (per card)",
            "decline_rate": "Decline (all attempts)",
            "decline_rate_per_card": "Decline (per card)",
        },
        period=period,
        grain=grain,
        title="Rates",
        key="payments_rates_chart",
    )
    shown_rates = exports.rates(rates, period, grain)
    with st.expander("Rates as a table"):
        widgets.table(shown_rates, key="payments_rates_table")
    widgets.csv_download(
        shown_rates,
        f"payment-rates-{grain}.csv",
        label="Download rates (CSV)",
        key="payments_rates_csv",
    )

st.subheader("Decline reasons")
reasons = data.decline_reasons(actor, period)
if reasons.empty:
    st.info("No declines in this period.")
else:
    charts.decline_reasons(reasons, title="Declines by reason", key="payments_reasons_chart")
    shown_reasons = exports.reasons(reasons)
    widgets.table(shown_reasons, key="payments_reasons_table")
    widgets.csv_download(
        shown_reasons,
        "decline-reasons.csv",
        label="Download decline reasons (CSV)",
        key="payments_reasons_csv",
    )

st.subheader("Volume by currency")
st.caption(
    "Successful payments only; one chart per currency, in its own units (never added across "
    "currencies). Hover a bar for the exact amount."
)
volume = data.volume_by_currency(actor, period, grain)
if volume.empty:
    st.info("No successful payments in this period.")
else:
    charts.volume_per_currency(volume, period=period, grain=grain, key="payments_volume_chart")
    shown_volume = exports.volume(volume, period, grain)
    with st.expander("Volumes as a table"):
        widgets.table(shown_volume, key="payments_volume_table")
    widgets.csv_download(
        shown_volume,
        f"volume-by-currency-{grain}.csv",
        label="Download volumes (CSV)",
        key="payments_volume_csv",
    )
