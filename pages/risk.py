"""Risk: open flags of suspicious failed payments, the evidence behind one, and its review."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import live as views
from dashboard import widgets
from dashboard.auth import require

actor = require("risk.review")
st.set_page_config(layout="wide")
st.title("Risk")
st.caption(
    "Bursts of failed payments for one card, customer, email, IP address or promotion code, "
    "and card testing (many cards failing for one buyer), counted in Stripe's time. Confirm "
    "an attack or dismiss a false alarm, with a note: every review is audited."
)

show = st.segmented_control(
    "Show", ["Open", "Confirmed", "Dismissed"], default="Open", key="risk_status"
)
status = (show or "Open").lower()
flags = views.flags(actor, status)
if not flags:
    widgets.success("No open flag." if status == "open" else f"No {status} flag.")
    st.stop()

widgets.rows(
    [
        {
            "flag": f"#{f.id}",
            "pattern": views.PATTERN_LABELS.get(f.pattern, f.pattern),
            "entity": f"{views.KIND_LABELS.get(f.kind, f.kind)}: {f.entity}",
            "failures": f.failures,
            "cards": f.distinct_cards,
            "from (UTC)": f"{f.window_start:%Y-%m-%d %H:%M:%S}",
            "to (UTC)": f"{f.window_end:%Y-%m-%d %H:%M:%S}",
            "reviewed by": f.reviewed_by,
        }
        for f in flags
    ],
    key="risk_flags",
)

by_label = {f.label: f.id for f in flags}
chosen = st.selectbox("Flag", list(by_label), format_func=widgets.plain, key="risk_flag")
detail = views.detail(actor, by_label[chosen]) if chosen else None
if detail is None:
    st.warning("This flag no longer exists: it was merged into another one. Refresh the list.")
    st.stop()

flag = detail.flag
failures, cards, span = st.columns(3)
failures.metric("Failed attempts", f"{flag.failures:,}")
cards.metric("Distinct cards", f"{flag.distinct_cards:,}")
minutes = (flag.window_end - flag.window_start).total_seconds() / 60
span.metric("Within", f"{minutes:.0f} min")

st.subheader("Timeline of the entity's attempts")
timeline = detail.timeline
figure = go.Figure()
for outcome, color in (("failed", "#c62828"), ("succeeded", "#2e7d32")):
    part = timeline[timeline["outcome"] == outcome]
    figure.add_trace(
        go.Scatter(
            x=part["time (UTC)"],
            y=part["amount"],
            mode="markers",
            name=outcome,
            marker={"color": color, "size": 9},
            text=widgets.chart_texts(part["decline"]),
            hovertemplate="%{x}<br>%{y}<br>%{text}<extra></extra>",
        )
    )
figure.add_vrect(
    x0=flag.window_start,
    x1=flag.window_end,
    fillcolor="#c62828",
    opacity=0.08,
    line_width=0,
    annotation_text="flagged window",
)
figure.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis_title="amount")
st.plotly_chart(figure, key="risk_timeline")

st.subheader("Attempts behind the flag")
widgets.rows(detail.attempts, key="risk_attempts")
if detail.order_ids:
    widgets.markdown(
        widgets.md(
            "Orders: **{}** (open them on the Orders page by id).",
            ", ".join(str(order_id) for order_id in detail.order_ids),
        )
    )
else:
    st.caption("No order is linked to these attempts (failed before checkout completed).")

st.subheader("Review")
if flag.status != "open":
    widgets.info(widgets.md("{} by {}:", flag.status.capitalize(), flag.reviewed_by))
    widgets.text(flag.note or "")
else:
    with st.form("risk_review", clear_on_submit=True):
        note = st.text_area("Note (what you checked)", key="risk_note", max_chars=2000)
        confirm, dismiss = st.columns(2)
        confirmed = confirm.form_submit_button("Confirm attack", type="primary")
        dismissed = dismiss.form_submit_button("Dismiss")
    if confirmed or dismissed:
        ok, message = views.review(actor, flag.id, "confirm" if confirmed else "dismiss", note)
        (widgets.success if ok else widgets.error)(message)
