"""Reconcile & replay (admins): apply the Stripe events our webhook missed, repair paid
sessions without a paid order, and replay one stored event with a dry run first."""

from __future__ import annotations

import streamlit as st

from dashboard import forms, widgets
from dashboard import live as views
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
job = views.reconcile_state(actor)
running = job is not None and job.running
label = f"Run reconciliation (last {days} days)"
if st.button(label, key=forms.key("ops", "reconcile"), disabled=running):  # markup: console text
    ok, message = views.start_reconcile(actor, days)
    if ok:
        forms.reset("ops")  # a second click of this button is stale: it does nothing
        widgets.flash("operations", message)
        st.rerun()
    widgets.error(message)
widgets.show_flash("operations")


@st.fragment(run_every=1.0 if running else None)
def reconcile_progress() -> None:
    """The job as every session sees it, redrawn each second while it runs."""
    job = views.reconcile_state(actor)
    if job is None:
        return
    if job.running:
        step = job.step or "starting"  # the job's own step names
        with st.status(f"Reconciliation running: {step}", expanded=True):  # markup: console text
            count = f"{job.done}/{job.total}" if job.total else f"{job.done}"
            st.progress(job.fraction, text=f"{job.step or 'starting'}: {count}")
            widgets.caption(f"Reconciliation {job.describe()}. It runs once at a time.")
        return
    if running:  # it finished while this page watched: redraw the page (button, report)
        st.rerun()
    if job.result:
        outcome = "finished" if job.status == "done" else "FAILED"
        widgets.caption(f"Last reconciliation {outcome}: {job.describe()}.")
        st.code("\n".join(job.result), language=None)


reconcile_progress()

st.subheader("Replay a stored event")
failed = views.failed_events(actor)
if failed.empty:
    st.caption("No stored event is failing.")
else:
    st.caption("Events whose handler failed, oldest first:")
    widgets.failures_table(failed, key="ops_failed")
event_id = st.text_input("Event id (evt_...)", key="ops_event").strip()
dry_col, apply_col = st.columns(2)
if dry_col.button("Dry run", key="ops_dry", disabled=not event_id):
    result = views.run_replay(actor, event_id, dry_run=True)
    if isinstance(result, str):  # no such event: nothing to replay for real either
        st.session_state.pop("ops_dry_ran", None)
        widgets.error(result)
    else:
        st.session_state["ops_dry_ran"] = event_id
        widgets.info(result.summary())
        if result.changes:
            widgets.rows(views.changes_table(result), key="ops_changes")
ready = st.session_state.get("ops_dry_ran") == event_id and bool(event_id)
if apply_col.button("Replay for real", key="ops_apply", disabled=not ready):
    forms.ask("ops_replay", {"event_id": event_id})  # names the event; nothing applied yet
    st.rerun()
asked = forms.pending("ops_replay")
if asked is not None and asked["event_id"] == event_id:
    with st.container(border=True):
        widgets.warning(
            widgets.md(
                "Replay {} for real? Its handler runs again and what the dry run showed is "
                "committed (the change is in the audit log).",
                widgets.mono(asked["event_id"]),
            )
        )
        yes, no = st.columns(2)
        if yes.button(widgets.md("Yes, replay {}", asked["event_id"]), key="ops_confirm"):
            forms.cancel("ops_replay")
            st.session_state.pop("ops_dry_ran", None)
            with st.spinner(widgets.md("Replaying {}…", asked["event_id"])):
                result = views.run_replay(actor, asked["event_id"], dry_run=False)
            if isinstance(result, str):
                widgets.error(result)
            elif result.error:
                widgets.error(result.summary())
            else:
                widgets.success(result.summary())
        if no.button("Cancel", key="ops_cancel"):
            forms.cancel("ops_replay")
            st.rerun()
if not ready and event_id:
    st.caption("Run the dry run first: the real replay is enabled after it.")
