"""Reconcile & replay (admins): apply the Stripe events our webhook missed, repair paid
sessions without a paid order, and replay one stored event with a dry run first."""

from __future__ import annotations

import streamlit as st

from dashboard import live as views
from dashboard import widgets
from dashboard.auth import require

actor = require("events.replay")
st.title("Reconcile & replay")
views.standin_notice()

st.subheader("Reconcile with Stripe")
st.caption(
    "Lists Stripe's events (Stripe keeps 30 days), applies through the webhook handlers every "
    "one we lack, and repairs paid Checkout Sessions that have no paid order. Safe to repeat: "
    "a second run finds nothing."
)
days = st.slider("Days to look back", min_value=1, max_value=30, value=30, key="ops_days")
if st.button("Run reconciliation", key="ops_reconcile"):
    report = views.run_reconcile(actor, days)
    st.session_state["ops_report"] = report.lines()
if "ops_report" in st.session_state:
    st.code(widgets.plain("\n".join(st.session_state["ops_report"]), multiline=True), language=None)

st.subheader("Replay a stored event")
failed = views.failed_events(actor)
if failed.empty:
    st.caption("No stored event is failing.")
else:
    st.caption("Events whose handler failed, oldest first:")
    widgets.rows(failed, key="ops_failed")
event_id = st.text_input("Event id (evt_...)", key="ops_event").strip()
dry_col, apply_col = st.columns(2)
if dry_col.button("Dry run", key="ops_dry", disabled=not event_id):
    result = views.run_replay(actor, event_id, dry_run=True)
    st.session_state["ops_dry_ran"] = event_id
    if isinstance(result, str):
        widgets.error(result)
    else:
        widgets.info(result.summary())
        if result.changes:
            widgets.rows(views.changes_table(result), key="ops_changes")
ready = st.session_state.get("ops_dry_ran") == event_id and bool(event_id)
if apply_col.button("Replay for real", key="ops_apply", disabled=not ready):
    result = views.run_replay(actor, event_id, dry_run=False)
    st.session_state.pop("ops_dry_ran", None)
    if isinstance(result, str):
        widgets.error(result)
    elif result.error:
        widgets.error(result.summary())
    else:
        widgets.success(result.summary())
if not ready and event_id:
    st.caption("Run the dry run first: the real replay is enabled after it.")
