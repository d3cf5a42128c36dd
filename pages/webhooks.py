"""Webhooks: is Stripe reaching us, and are we applying what it sends?"""

from __future__ import annotations

import streamlit as st

from dashboard import data, live, widgets
from dashboard.auth import require

FAILURES_PAGE = 20

actor = require("metrics.view")
st.set_page_config(layout="wide")  # tables and per-currency figures need the width

st.title("Webhooks")
period = widgets.period_picker("webhooks", default="Last 7 days")
st.caption(f"{widgets.period_label(period)} (UTC)")

st.subheader("Deliveries per day")
deliveries = data.deliveries_by_day(actor, period)
if deliveries.empty:
    st.info("No deliveries in this period.")
else:
    widgets.stacked_bars(
        deliveries,
        "day",
        "outcome",
        "deliveries",
        title="Deliveries by outcome",
        key="wh_deliveries",
    )
    with st.expander("Deliveries per day as a table"):
        widgets.table(deliveries, key="wh_deliveries_table")

st.subheader("Retries")
retries = data.retry_stats(actor, period)
events, retried, most = st.columns(3)
events.metric("Events received", f"{retries.events:,}")
retried.metric(
    "Needed more than one delivery",
    f"{retries.events_with_retries:,} ({widgets.percent(retries.retry_share)})",
)
most.metric("Most deliveries of one event", f"{retries.max_deliveries:,}")
if not retries.distribution.empty:
    widgets.bars(
        retries.distribution,
        "deliveries",
        "events",
        title="Events by number of deliveries (log scale)",
        key="wh_retries",
        log_y=True,
    )

left, right = st.columns(2)
with left:
    st.subheader("Signature failures")
    signatures = data.signature_failures(actor, period)
    if signatures.empty:
        st.success("No rejected deliveries.")
    else:
        widgets.rows(signatures, key="wh_signatures")
with right:
    st.subheader("Processing failures")
    offset = widgets.page_offset("wh_failures", FAILURES_PAGE)
    failures = data.processing_failures(actor, period, limit=FAILURES_PAGE, offset=offset)
    if failures.total == 0:
        st.success("No delivery failed in processing.")
    else:
        st.caption(f"{failures.total:,} failed deliveries, newest first.")
        widgets.failures_table(failures.rows, key="wh_failures")
        widgets.pager(failures.total, FAILURES_PAGE, "wh_failures")

st.subheader("Lag")
st.caption("From Stripe's `created` to our first receipt, and to the event being processed.")
lag = data.webhook_lag(actor, period)
if lag.empty:
    st.info("No events in this period.")
else:
    widgets.rows(lag, key="wh_lag")

st.subheader("Oldest events still failing")
failing = data.oldest_failing_events(actor, limit=20)
if failing.total == 0:
    st.success("No event is failing.")
else:
    st.caption(
        f"{failing.total:,} events not applied (failed, or unprocessable with the reason in "
        f"last_error); the {len(failing.rows)} oldest. Admins replay them from "
        "Reconcile & replay."
    )
    widgets.failures_table(failing.rows, key="wh_failing")

retention_status = live.retention_status(actor)
if retention_status is not None:
    policy, last_run = retention_status
    st.subheader("Retention")
    st.text(
        f"Delivery rows and rejected-request counters: {policy.deliveries_days} days; "
        f"rejected-request samples: {policy.rejection_samples_days} days; raw bodies of applied "
        f"events: {policy.event_bodies_days} days. Event rows, orders, attempts, fulfillments "
        "and the audit log are kept."
    )
    if last_run is None:
        st.text("Last run: never (python -m core retention --apply, daily from cron).")
    else:
        removed = ", ".join(
            f"{kind} {n}" for kind, n in last_run.details.items() if kind != "policy"
        )
        st.text(f"Last run: {last_run.at:%Y-%m-%d %H:%M} UTC by {last_run.actor}: {removed}.")

# --- Webhook endpoint health ---------------------------------------------------------------------
# Another engineer adds the "Webhook endpoint health" section here (Stripe's view of the endpoint:
# enabled events, status, API version), below everything computed from our own tables.
live.render_endpoint_health(actor)
