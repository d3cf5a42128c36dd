"""Overview: the chosen period against the one before it."""

from __future__ import annotations

import streamlit as st

from dashboard import data, widgets
from dashboard.auth import require

actor = require("metrics.view")
st.set_page_config(layout="wide")  # tables and per-currency figures need the width

st.title("Overview")
period = widgets.period_picker("overview")
st.caption(
    f"{widgets.period_label(period)} compared with {widgets.period_label(period.previous())} (UTC)"
)
now, before = data.overview(actor, period)
if data.is_demo(actor):
    st.info(widgets.DEMO_NOTE, icon=":material/science:")

st.subheader("Payment volume")
currencies = sorted(set(now.volume_by_currency) | set(before.volume_by_currency))
if not currencies:
    st.info("No successful payments in this period.")
for column, currency in widgets.grid(currencies, per_row=4):
    current = now.volume_by_currency.get(currency, 0)
    previous = before.volume_by_currency.get(currency, 0)
    # Compact figures, the tile labelled with the currency, always fit (checked at 1280 px);
    # the exact amounts are in the tooltip.
    column.metric(
        widgets.md("{}", currency.upper()),
        widgets.money_compact(current, currency, code=False),
        widgets.money_delta_compact(current, previous, currency, code=False),
        border=True,
        help=f"{widgets.money(current, currency)} (previous period: "
        f"{widgets.money(previous, currency)})",
    )

st.subheader("Payments")
attempts, success, decline = st.columns(3)
attempts.metric(
    "Payment attempts", f"{now.attempts:,}", widgets.count_delta(now.attempts, before.attempts)
)
success.metric(
    "Success rate",
    widgets.percent(now.success_rate),
    widgets.rate_delta(now.success_rate, before.success_rate),
)
decline.metric(
    "Decline rate",
    widgets.percent(now.decline_rate),
    widgets.rate_delta(now.decline_rate, before.decline_rate),
    delta_color="inverse",
)

st.subheader("Refunds and disputes")
refunds, refunded, disputes = st.columns(3)
refunds.metric(
    "Refunded orders",
    f"{now.refunded_orders:,}",
    widgets.count_delta(now.refunded_orders, before.refunded_orders),
    delta_color="inverse",
)
refunded.markdown(
    widgets.md(
        "**Refunded amount**\n\n{}",
        " · ".join(
            widgets.money(amount, currency)
            for currency, amount in sorted(now.refunded_amount_by_currency.items())
        )
        or "–",
    )
)
disputes.metric(
    "Disputed orders",
    f"{now.disputed_orders:,}",
    widgets.count_delta(now.disputed_orders, before.disputed_orders),
    delta_color="inverse",
)

st.subheader("Needs attention")
failures, unfulfilled, risk = st.columns(3)
failures.metric(
    "Webhook failures",
    f"{now.webhook_failures:,}",
    widgets.count_delta(now.webhook_failures, before.webhook_failures),
    delta_color="inverse",
    help="Deliveries rejected or failed in processing.",
)
# As of now, whatever the period: a change against "the previous period" would mean nothing.
unfulfilled.metric(
    "Paid, not fulfilled",
    f"{now.paid_not_fulfilled:,}",
    help="As of now, not for the period.",
)
risk.metric("Open risk flags", f"{now.open_risk_flags:,}", help="As of now, not for the period.")

st.subheader("Recent alerts")
alerting = data.alerting_status(actor)
widgets.alerting_status(alerting.last, alerting.overdue, alerting.interval, alerting.now)
recent = data.recent_alerts(actor)
if recent.empty:
    st.info("No alerts raised." if not alerting.overdue else "No alerts recorded.")
else:
    widgets.rows(recent, key="overview_alerts")
